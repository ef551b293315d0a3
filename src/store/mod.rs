//! The bucket side of the gateway: the only module that talks to the bucket (docs/design.md §1).
//!
//! `Bucket` wraps `object_store` for a `file://` directory or an `s3://` bucket, adding the
//! gateway's own policy: multipart above a threshold, bandwidth limits, retries with backoff
//! (object_store's, bounded by config) and errors that say in one line whether the endpoint is
//! unreachable, the bucket missing or the credentials refused. `frame` seals chunks, `chunks`
//! stores them by content address, `keycheck` pairs a bucket with a key, `treehash` hashes
//! archives. Invariant: data read back through `ChunkStore` has passed its frame's
//! authentication; anything else is a `StoreError::Corrupt` naming the object, never data.

pub mod background;
pub mod bench;
pub mod chunks;
pub mod conditional;
#[doc(hidden)]
pub mod contract;
pub mod device;
pub mod frame;
pub mod keycheck;
pub mod keys;
pub mod limit;
pub mod master;
pub mod md5many;
pub mod objects;
pub mod parted;
mod raw;
pub mod treehash;
pub mod upload;
pub mod writer;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::config::{BucketConfig, BucketLocation, Credentials};
use crate::error_chain::{innermost, one_line};
pub use chunks::{ChunkPins, ChunkRef, ChunkStore};
pub use conditional::Precondition;
pub use frame::{Codec, FrameError};
pub use keys::ChunkId;
pub use master::{KeyError, MasterKey};
pub use raw::rfc3339;

/// How many multipart parts of one object are in flight at once.
pub(crate) const PART_CONCURRENCY: usize = 4;
/// Connection set-up bound: an unreachable endpoint should be reported in seconds, not minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{bucket}: object {key} not found")]
    NotFound { bucket: String, key: String },
    #[error("{bucket}: endpoint {endpoint} is unreachable ({detail})")]
    Unreachable {
        bucket: String,
        endpoint: String,
        detail: String,
    },
    #[error("{bucket}: the bucket does not exist{at}")]
    NoSuchBucket { bucket: String, at: String },
    #[error("{bucket}: access denied; check the access key and secret ({detail})")]
    AccessDenied { bucket: String, detail: String },
    #[error(transparent)]
    Corrupt(FrameError),
    #[error(
        "{bucket}: the key (fingerprint {fingerprint}) does not open {key}: \
         this bucket is paired with another key"
    )]
    WrongKey {
        bucket: String,
        key: &'static str,
        fingerprint: String,
    },
    #[error(
        "{bucket}: no {key} object; this bucket has not been activated (run `tidegate activate`)"
    )]
    NotActivated { bucket: String, key: &'static str },
    #[error("{bucket}: cannot open the bucket: {detail}")]
    Setup { bucket: String, detail: String },
    /// A conditional write refused: the object changed since the writer last saw it (or
    /// appeared, for a create). `by` names the other writer where the caller knows it.
    #[error("{bucket}: {key} was written by {by} meanwhile; this write was refused")]
    Conflict {
        bucket: String,
        key: String,
        by: String,
    },
    #[error("{bucket}: {op} {key}: {detail}")]
    Other {
        bucket: String,
        op: &'static str,
        key: String,
        detail: String,
    },
}

impl StoreError {
    /// True for failures that may pass by themselves (network, server), as opposed to a missing
    /// object, refused credentials or corrupt data.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Other { .. })
    }
}

/// Size and key of an object, as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last modification, seconds since the epoch (garbage collection's grace period).
    pub modified_unix: i64,
    /// The ETag as listed, quotes removed.
    pub etag: Option<String>,
}

#[derive(Debug, Default)]
struct Traffic {
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    errors: AtomicU64,
}

impl Traffic {
    fn count(&self, requests: &AtomicU64, bytes: &AtomicU64, len: usize) {
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Bucket traffic since start (object PUTs/GETs, not counting retries and listings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    pub puts: u64,
    pub put_bytes: u64,
    pub gets: u64,
    pub get_bytes: u64,
    /// Failed requests (after retries), of any kind.
    pub errors: u64,
}

/// One bucket (and prefix): the store every gateway writes through.
#[derive(Debug)]
pub struct Bucket {
    inner: Arc<dyn ObjectStore>,
    /// The same bucket with retries off, for start-up checks that should answer quickly.
    probe: Arc<dyn ObjectStore>,
    describe: String,
    endpoint: String,
    upload_limit: limit::RateLimiter,
    download_limit: limit::RateLimiter,
    traffic: Traffic,
    multipart_threshold: u64,
    part_size: usize,
    /// False for a `file://` bucket: object_store's local store keeps no user metadata.
    user_metadata: bool,
    /// Signed requests object_store cannot express; `None` for `file://` and test stores.
    raw: Option<raw::RawS3>,
    /// Whether the server honours If-None-Match and If-Match, once probed (`conditional`).
    conditional: std::sync::OnceLock<Option<conditional::EtagForm>>,
}

impl Bucket {
    /// Builds the client; no request is sent (see [`Bucket::check`]). A missing `file://`
    /// directory is created only when `create_local` is set (the embedded default).
    pub fn open(cfg: &BucketConfig, create_local: bool) -> Result<Self, StoreError> {
        let describe = cfg.location.to_string();
        let setup = |detail: String| StoreError::Setup {
            bucket: describe.clone(),
            detail,
        };
        let (inner, probe, endpoint): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>, String) =
            match &cfg.location {
                BucketLocation::Local { dir } => {
                    if !dir.is_dir() {
                        if create_local {
                            std::fs::create_dir_all(dir)
                                .map_err(|e| setup(format!("creating {}: {e}", dir.display())))?;
                        } else {
                            return Err(StoreError::NoSuchBucket {
                                bucket: describe,
                                at: format!(" (no directory {})", dir.display()),
                            });
                        }
                    }
                    let fs = LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| setup(one_line(&e)))?
                        .with_automatic_cleanup(true);
                    let fs: Arc<dyn ObjectStore> = Arc::new(fs);
                    (fs.clone(), fs, "local directory".to_owned())
                }
                BucketLocation::S3 { bucket, prefix } => {
                    let retry = RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: usize::try_from(cfg.max_retries).unwrap_or(usize::MAX),
                        retry_timeout: cfg.retry_timeout,
                    };
                    let no_retry = RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 0,
                        retry_timeout: CONNECT_TIMEOUT,
                    };
                    let build = |retry: RetryConfig| {
                        let store = s3_builder(cfg, bucket)
                            .with_retry(retry)
                            .build()
                            .map_err(|e| setup(one_line(&e)))?;
                        Ok::<Arc<dyn ObjectStore>, StoreError>(if prefix.is_empty() {
                            Arc::new(store)
                        } else {
                            Arc::new(PrefixStore::new(store, prefix.as_str()))
                        })
                    };
                    let endpoint = cfg
                        .endpoint
                        .clone()
                        .unwrap_or_else(|| format!("AWS S3 ({})", cfg.region));
                    (build(retry)?, build(no_retry)?, endpoint)
                }
            };
        Ok(Self {
            inner,
            probe,
            describe,
            endpoint,
            upload_limit: limit::RateLimiter::new(cfg.upload_limit),
            download_limit: limit::RateLimiter::new(cfg.download_limit),
            traffic: Traffic::default(),
            multipart_threshold: cfg.multipart_threshold,
            part_size: usize::try_from(cfg.part_size).unwrap_or(usize::MAX),
            user_metadata: !matches!(cfg.location, BucketLocation::Local { .. }),
            raw: raw::RawS3::new(cfg),
            conditional: std::sync::OnceLock::new(),
        })
    }

    /// A bucket over any object store, for tests that inject failures (as mountpoint's
    /// `failure_client` does) or wrap the store to tamper with it.
    pub fn from_object_store(store: Arc<dyn ObjectStore>, describe: &str) -> Self {
        Self {
            inner: store.clone(),
            probe: store,
            describe: describe.to_owned(),
            endpoint: "test store".to_owned(),
            upload_limit: limit::RateLimiter::new(None),
            download_limit: limit::RateLimiter::new(None),
            traffic: Traffic::default(),
            multipart_threshold: crate::config::defaults::MULTIPART_THRESHOLD,
            part_size: usize::try_from(crate::config::defaults::PART_SIZE).unwrap_or(usize::MAX),
            user_metadata: true,
            raw: None,
            conditional: std::sync::OnceLock::new(),
        }
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One quick request (a listing, no retries) that tells whether the endpoint answers, the
    /// bucket exists and the credentials are accepted.
    pub async fn check(&self) -> Result<(), StoreError> {
        let prefix = ObjectPath::from("gateway");
        self.probe
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e, "list", "gateway/"))
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.upload_limit.acquire(data.len() as u64).await;
        self.traffic
            .count(&self.traffic.puts, &self.traffic.put_bytes, data.len());
        let path = ObjectPath::from(key);
        if (data.len() as u64) < self.multipart_threshold {
            self.inner
                .put(&path, PutPayload::from_bytes(data))
                .await
                .map_err(|e| self.classify(e, "put", key))?;
            return Ok(());
        }
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| self.classify(e, "start multipart upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut rest = data;
        while !rest.is_empty() {
            writer
                .wait_for_capacity(PART_CONCURRENCY)
                .await
                .map_err(|e| self.classify(e, "upload part of", key))?;
            let piece = rest.split_to(self.part_size.min(rest.len()));
            writer.put(piece);
        }
        // On failure WriteMultipart's drop aborts the upload, so no parts are left behind.
        writer
            .finish()
            .await
            .map_err(|e| self.classify(e, "complete multipart upload of", key))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.get_tagged(key).await?.0)
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let len = range.end.saturating_sub(range.start);
        self.download_limit.acquire(len).await;
        self.traffic
            .count(&self.traffic.gets, &self.traffic.get_bytes, len as usize);
        self.inner
            .get_range(&ObjectPath::from(key), range)
            .await
            .map_err(|e| self.classify(e, "get range of", key))
    }

    /// Size of an object, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&ObjectPath::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) => match self.classify(e, "head", key) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Deletes an object; deleting one that does not exist succeeds (S3 semantics).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&ObjectPath::from(key)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify(e, "delete", key) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Every object under `prefix` (a key prefix ending in `/`), in no particular order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let path = ObjectPath::from(prefix.trim_end_matches('/'));
        self.inner
            .list(Some(&path))
            .map_ok(|meta| ObjectInfo {
                key: meta.location.to_string(),
                size: meta.size,
                modified_unix: meta.last_modified.timestamp(),
                etag: meta.e_tag.map(|t| t.trim_matches('"').to_owned()),
            })
            .try_collect()
            .await
            .map_err(|e| self.classify(e, "list", prefix))
    }

    /// Current upload and download limits (bytes per second; `None` is unlimited).
    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        (self.upload_limit.rate(), self.download_limit.rate())
    }

    /// Changes the limits for every transfer from now on.
    pub fn set_limits(&self, upload: Option<u64>, download: Option<u64>) {
        self.upload_limit.set_rate(upload);
        self.download_limit.set_rate(download);
    }

    /// Requests and bytes to and from the bucket since start, for metrics.
    pub fn traffic(&self) -> TrafficCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TrafficCounts {
            puts: get(&self.traffic.puts),
            put_bytes: get(&self.traffic.put_bytes),
            gets: get(&self.traffic.gets),
            get_bytes: get(&self.traffic.get_bytes),
            errors: get(&self.traffic.errors),
        }
    }

    /// Maps an object_store error to what the operator needs to know, on one line.
    fn classify(&self, e: object_store::Error, op: &'static str, key: &str) -> StoreError {
        self.traffic.errors.fetch_add(1, Ordering::Relaxed);
        let bucket = self.describe.clone();
        let detail = one_line(&e);
        let has = |needle: &str| detail.contains(needle);
        if has("NoSuchBucket") {
            return StoreError::NoSuchBucket {
                bucket,
                at: format!(" at {}", self.endpoint),
            };
        }
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                bucket,
                key: key.to_owned(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                StoreError::AccessDenied { bucket, detail }
            }
            // Before the status words below: a request that never reached the bucket has no
            // status, and its detail holds the endpoint, whose port may read "403".
            _ if has("error sending request")
                || has("onnection refused")
                || has("dns error")
                || has("timed out")
                || has("onnection reset") =>
            {
                StoreError::Unreachable {
                    bucket,
                    endpoint: self.endpoint.clone(),
                    detail: innermost(&e),
                }
            }
            _ if has("InvalidAccessKeyId")
                || has("SignatureDoesNotMatch")
                || has("AccessDenied")
                || has("Forbidden") =>
            {
                StoreError::AccessDenied { bucket, detail }
            }
            _ => StoreError::Other {
                bucket,
                op,
                key: key.to_owned(),
                detail,
            },
        }
    }
}

fn s3_builder(cfg: &BucketConfig, bucket: &str) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&cfg.region)
        .with_virtual_hosted_style_request(!cfg.path_style)
        .with_client_options(ClientOptions::new().with_connect_timeout(CONNECT_TIMEOUT));
    if let Some(endpoint) = &cfg.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Credentials::Static {
        access_key_id,
        secret_access_key,
    } = &cfg.credentials
    {
        b = b
            .with_access_key_id(access_key_id)
            .with_secret_access_key(secret_access_key);
    }
    b
}
