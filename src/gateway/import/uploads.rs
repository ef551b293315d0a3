//! Where a device keeps the sealed records of its multipart uploads in progress: the catalog's
//! `job_uploads`/`job_parts` rows on a standalone device; on a device of a device cluster, objects
//! in the cluster's bucket, `mp/up/<upload id>` and `mp/part/<upload id>/<part number>`, so that
//! an upload begun on one device is continued, listed, completed or aborted through any other
//! (docs/decisions/0020-multipart-uploads-in-a-cluster.md).
//!
//! Must not: seal, open or judge a record (`multipart.rs` does, once for both backings), or
//! touch segments. Invariant: it stores and returns sealed bytes exactly as given, under the key
//! its upload id and part number name; in a cluster, a write returns only once Garage
//! acknowledged it at its write quorum.

use std::sync::Arc;

use futures::StreamExt;

use crate::catalog::{Catalog, CatalogError};
use crate::gateway::GatewayError;
use crate::store::{Bucket, StoreError};

/// Records fetched at once when listing a cluster's uploads or parts.
const RECORD_FETCHES: usize = 16;

/// How long a cluster device waits before looking again for an upload or part record it did
/// not find: Garage acknowledges a write once two of the three copies hold it, and a read in
/// `degraded` mode asks one copy, this device's node first (ADR 0014), so a record written
/// through another device an instant ago may not be here yet. About 1 s in all: a genuine
/// NoSuchUpload in a cluster costs that much.
const LATE_RECORD_WAITS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(750),
];

/// An upload's sealed record and when it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredUpload {
    pub upload_id: String,
    pub sealed: Vec<u8>,
    pub created_unix: i64,
}

/// A part record left in a cluster whose upload record is gone (an abort or completion cut
/// short, or a part stored while another device dropped its upload at a seal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrayPart {
    pub upload_id: String,
    pub number: u32,
    pub sealed: Vec<u8>,
}

/// The two backings of a device's multipart records.
#[derive(Debug, Clone)]
pub(crate) enum UploadStore {
    /// A standalone device: rows of its own catalog (SQLite, on the blocking pool).
    Catalog { catalog: Arc<Catalog>, job: String },
    /// A device of a cluster: sealed objects in the cluster's bucket.
    Cluster { bucket: Arc<Bucket> },
}

fn upload_key(upload_id: &str) -> String {
    format!("mp/up/{upload_id}")
}

fn parts_prefix(upload_id: &str) -> String {
    format!("mp/part/{upload_id}/")
}

fn part_key(upload_id: &str, number: u32) -> String {
    format!("mp/part/{upload_id}/{number}")
}

/// A listed object under `mp/` that is not a record this module writes: reported, never used.
#[derive(Debug, thiserror::Error)]
#[error("the cluster's multipart records hold an object this device never writes: {key}")]
pub struct ForeignUploadObject {
    pub key: String,
}

fn foreign(key: &str) -> GatewayError {
    GatewayError::Corrupt(Box::new(ForeignUploadObject {
        key: key.to_owned(),
    }))
}

/// `mp/part/<upload id>/<number>` → (upload id, number).
fn parse_part_key(key: &str) -> Option<(&str, u32)> {
    let (upload_id, number) = key.strip_prefix("mp/part/")?.split_once('/')?;
    let n: u32 = number.parse().ok()?;
    // One spelling per part: `007` would be a second key for part 7.
    (n.to_string() == number).then_some((upload_id, n))
}

/// Runs a catalog call on the blocking pool (SQLite never runs on an async worker).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, GatewayError> {
    Ok(tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| GatewayError::Internal(Box::new(e)))??)
}

/// A GET where absence is an answer.
async fn get_opt(bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, GatewayError> {
    match bucket.get(key).await {
        Ok(b) => Ok(Some(b.to_vec())),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A GET of a record another device may have just written: an absence, or the record
/// `stale` (a version the caller already found wanting), is looked at again
/// (`LATE_RECORD_WAITS`) before it counts.
async fn get_late(
    bucket: &Bucket,
    key: &str,
    stale: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, GatewayError> {
    let mut got = get_opt(bucket, key).await?;
    for wait in LATE_RECORD_WAITS {
        if got.as_deref().is_some_and(|g| Some(g) != stale) {
            break;
        }
        tokio::time::sleep(wait).await;
        got = get_opt(bucket, key).await?;
    }
    Ok(got)
}

/// The upload records listed in a cluster's bucket: (key, upload id, when the upload began).
async fn listed_uploads(bucket: &Bucket) -> Result<Vec<(String, String, i64)>, GatewayError> {
    let mut listed = Vec::new();
    for obj in bucket.list("mp/up/").await? {
        let id = obj
            .key
            .strip_prefix("mp/up/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| foreign(&obj.key))?
            .to_owned();
        // The upload record is written once, so its stamp is when the upload began.
        listed.push((obj.key, id, obj.modified_unix));
    }
    Ok(listed)
}

/// Fetches listed records at once; one deleted between the listing and its GET is left out.
async fn fetch_all<T>(
    bucket: &Arc<Bucket>,
    listed: Vec<(String, T)>,
) -> Result<Vec<(T, Vec<u8>)>, GatewayError> {
    let fetched: Vec<_> = futures::stream::iter(listed)
        .map(|(key, tag)| {
            let bucket = bucket.clone();
            async move { (get_opt(&bucket, &key).await, tag) }
        })
        .buffered(RECORD_FETCHES)
        .collect()
        .await;
    let mut out = Vec::with_capacity(fetched.len());
    for (got, tag) in fetched {
        if let Some(sealed) = got? {
            out.push((tag, sealed));
        }
    }
    Ok(out)
}

impl UploadStore {
    /// Stores a new upload's record.
    pub(crate) async fn insert(
        &self,
        upload_id: &str,
        sealed: Vec<u8>,
    ) -> Result<(), GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job, id) = (catalog.clone(), job.clone(), upload_id.to_owned());
                blocking(move || catalog.insert_job_upload(&job, &id, &sealed)).await
            }
            Self::Cluster { bucket } => {
                Ok(bucket.put(&upload_key(upload_id), sealed.into()).await?)
            }
        }
    }

    /// An upload's sealed record; `None`: no such upload (never begun, completed or aborted;
    /// in a cluster, not found again after `LATE_RECORD_WAITS`).
    pub(crate) async fn get(&self, upload_id: &str) -> Result<Option<Vec<u8>>, GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job, id) = (catalog.clone(), job.clone(), upload_id.to_owned());
                blocking(move || catalog.job_upload(&job, &id)).await
            }
            Self::Cluster { bucket } => get_late(bucket, &upload_key(upload_id), None).await,
        }
    }

    /// Every upload in progress (in a cluster: begun on any device; a listing may trail a
    /// write or delete through another device by the moment Garage takes to reach this
    /// device's copy).
    pub(crate) async fn list(&self) -> Result<Vec<StoredUpload>, GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job) = (catalog.clone(), job.clone());
                let rows = blocking(move || catalog.job_uploads(&job)).await?;
                Ok(rows
                    .into_iter()
                    .map(|(upload_id, sealed, created_unix)| StoredUpload {
                        upload_id,
                        sealed,
                        created_unix,
                    })
                    .collect())
            }
            Self::Cluster { bucket } => {
                let listed = listed_uploads(bucket)
                    .await?
                    .into_iter()
                    .map(|(key, id, created_unix)| (key, (id, created_unix)))
                    .collect();
                Ok(fetch_all(bucket, listed)
                    .await?
                    .into_iter()
                    .map(|((upload_id, created_unix), sealed)| StoredUpload {
                        upload_id,
                        sealed,
                        created_unix,
                    })
                    .collect())
            }
        }
    }

    /// Stores part `number` of an upload, replacing any earlier one; returns the record it
    /// replaced. In a cluster the replaced record is the one read just before the write: two
    /// devices storing the same part at the same instant may each miss the other's (its
    /// segments are then left unreferenced, never freed while in use).
    pub(crate) async fn put_part(
        &self,
        upload_id: &str,
        number: u32,
        sealed: Vec<u8>,
        size: u64,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job, id) = (catalog.clone(), job.clone(), upload_id.to_owned());
                blocking(move || catalog.put_job_part(&job, &id, number, &sealed, size)).await
            }
            Self::Cluster { bucket } => {
                let key = part_key(upload_id, number);
                let old = get_opt(bucket, &key).await?;
                bucket.put(&key, sealed.into()).await?;
                Ok(old)
            }
        }
    }

    /// One part's sealed record, if stored. In a cluster an absence, or the record `stale`
    /// (one the caller found wanting: another device may have replaced it an instant ago), is
    /// looked at again as `get` does; the catalog's answer is final.
    pub(crate) async fn part(
        &self,
        upload_id: &str,
        number: u32,
        stale: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job, id) = (catalog.clone(), job.clone(), upload_id.to_owned());
                blocking(move || catalog.job_part(&job, &id, number)).await
            }
            Self::Cluster { bucket } => get_late(bucket, &part_key(upload_id, number), stale).await,
        }
    }

    /// An upload's parts (number, sealed record), by number.
    pub(crate) async fn parts(&self, upload_id: &str) -> Result<Vec<(u32, Vec<u8>)>, GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job, id) = (catalog.clone(), job.clone(), upload_id.to_owned());
                let rows = blocking(move || catalog.job_parts(&job, &id)).await?;
                Ok(rows.into_iter().map(|(n, sealed, _)| (n, sealed)).collect())
            }
            Self::Cluster { bucket } => {
                let mut listed = Vec::new();
                for obj in bucket.list(&parts_prefix(upload_id)).await? {
                    match parse_part_key(&obj.key) {
                        Some((id, n)) if id == upload_id => listed.push((obj.key, n)),
                        _ => return Err(foreign(&obj.key)),
                    }
                }
                let mut parts = fetch_all(bucket, listed).await?;
                parts.sort_by_key(|(n, _)| *n);
                Ok(parts)
            }
        }
    }

    /// Ends an upload: its record and its part records go. On a standalone device `object`
    /// (name id, sealed record, size), the completed object, replaces any earlier one in the
    /// same transaction; in a cluster the object's record was published before (the bucket's
    /// `rec/` object is the index), so the upload record goes first: once it is gone no device
    /// completes or aborts the upload again, and part records left by a failure between the
    /// two steps are strays (`strays`), swept at the seal.
    pub(crate) async fn finish(
        &self,
        upload_id: &str,
        parts: &[u32],
        object: Option<(Vec<u8>, Vec<u8>, u64)>,
    ) -> Result<(), GatewayError> {
        match self {
            Self::Catalog { catalog, job } => {
                let (catalog, job, id) = (catalog.clone(), job.clone(), upload_id.to_owned());
                blocking(move || {
                    let object = object.as_ref().map(|(n, r, s)| (&n[..], &r[..], *s));
                    catalog.finish_job_upload(&job, &id, object).map(|_| ())
                })
                .await
            }
            Self::Cluster { bucket } => {
                bucket.delete(&upload_key(upload_id)).await?;
                for n in parts {
                    bucket.delete(&part_key(upload_id, *n)).await?;
                }
                Ok(())
            }
        }
    }

    /// Part records whose upload record is gone (always none in a catalog, whose transactions
    /// remove both together).
    pub(crate) async fn strays(&self) -> Result<Vec<StrayPart>, GatewayError> {
        let Self::Cluster { bucket } = self else {
            return Ok(Vec::new());
        };
        // The ids are in the keys: no upload record is fetched.
        let uploads: std::collections::HashSet<String> = listed_uploads(bucket)
            .await?
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        let mut listed = Vec::new();
        for obj in bucket.list("mp/part/").await? {
            let Some((id, n)) = parse_part_key(&obj.key) else {
                return Err(foreign(&obj.key));
            };
            if !uploads.contains(id) {
                listed.push((obj.key.clone(), (id.to_owned(), n)));
            }
        }
        Ok(fetch_all(bucket, listed)
            .await?
            .into_iter()
            .map(|((upload_id, number), sealed)| StrayPart {
                upload_id,
                number,
                sealed,
            })
            .collect())
    }

    /// Removes one stray part record (its segments were dealt with by the caller).
    pub(crate) async fn remove_stray(
        &self,
        upload_id: &str,
        number: u32,
    ) -> Result<(), GatewayError> {
        match self {
            Self::Catalog { .. } => Ok(()),
            Self::Cluster { bucket } => Ok(bucket.delete(&part_key(upload_id, number)).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_keys_parse_back_and_other_spellings_do_not() {
        let cases = [
            (part_key("ab", 7), Some(("ab", 7))),
            ("mp/part/ab/10000".to_owned(), Some(("ab", 10000))),
            ("mp/part/ab/007".to_owned(), None),
            ("mp/part/ab/x".to_owned(), None),
            ("mp/part/ab".to_owned(), None),
            ("mp/up/ab".to_owned(), None),
            ("mp/part/ab/-1".to_owned(), None),
        ];
        for (key, want) in cases {
            assert_eq!(parse_part_key(&key), want, "{key}");
        }
    }

    /// Both backings answer the same calls the same way (a local directory stands in for the
    /// cluster's Garage bucket).
    #[tokio::test]
    async fn catalog_and_cluster_backings_agree() {
        let dir = tempfile::tempdir().unwrap();
        let device = crate::gateway::import::device::tests::device(dir.path()).await;
        let bucket = Arc::new(
            Bucket::open(
                &crate::config::BucketConfig::local(dir.path().join("bucket")),
                true,
            )
            .unwrap(),
        );
        let stores = [
            UploadStore::Catalog {
                catalog: device.inner.catalog.clone(),
                job: device.job_id().to_owned(),
            },
            UploadStore::Cluster { bucket },
        ];
        for store in stores {
            let name = format!("{store:?}").chars().take(8).collect::<String>();
            assert_eq!(store.get("u1").await.unwrap(), None, "{name}");
            store.insert("u1", b"up".to_vec()).await.unwrap();
            store.insert("u2", b"up2".to_vec()).await.unwrap();
            assert_eq!(store.get("u1").await.unwrap().as_deref(), Some(&b"up"[..]));
            let ids: Vec<String> = store
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.upload_id)
                .collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(sorted, ["u1", "u2"], "{name}");
            assert_eq!(
                store.put_part("u1", 2, b"p2".to_vec(), 2).await.unwrap(),
                None
            );
            assert_eq!(
                store.put_part("u1", 10, b"p10".to_vec(), 3).await.unwrap(),
                None
            );
            assert_eq!(
                store
                    .put_part("u1", 2, b"p2b".to_vec(), 3)
                    .await
                    .unwrap()
                    .as_deref(),
                Some(&b"p2"[..]),
                "{name}"
            );
            assert_eq!(
                store.parts("u1").await.unwrap(),
                [(2, b"p2b".to_vec()), (10, b"p10".to_vec())],
                "{name}: parts by number, not by key order"
            );
            assert_eq!(
                store.part("u1", 10, None).await.unwrap().as_deref(),
                Some(&b"p10"[..])
            );
            // A record the caller calls stale comes back when it is still the one stored.
            assert_eq!(
                store.part("u1", 10, Some(b"p10")).await.unwrap().as_deref(),
                Some(&b"p10"[..])
            );
            assert_eq!(store.part("u1", 3, None).await.unwrap(), None);
            assert!(store.strays().await.unwrap().is_empty(), "{name}");
            store.finish("u1", &[2, 10], None).await.unwrap();
            assert_eq!(store.get("u1").await.unwrap(), None, "{name}");
            assert!(store.parts("u1").await.unwrap().is_empty(), "{name}");
            assert_eq!(store.list().await.unwrap().len(), 1, "{name}");
        }
    }
}
