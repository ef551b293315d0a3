//! Conditional writes (PUT with `If-None-Match: *` or `If-Match: <ETag>`), and the probe that
//! tells whether the bucket's server honours them (docs/compatibility.md).
//!
//! AWS S3, Ceph RGW and moto honour both; Garage 2.5 ignores both (the PUT simply overwrites);
//! a `file://` bucket honours a create but cannot compare ETags. Servers also disagree on the
//! form of an If-Match value: moto (as HTTP says) wants the ETag quoted as it was returned, RGW
//! 16 compares it without the quotes and refuses the quoted form as a mismatch; the probe finds
//! which form the server takes and `put_if` sends that one. The probe runs once per
//! `Bucket`, on a scratch key of its own, and its answer decides what the layers above may rest
//! on: nothing above `store` guesses from a server's name. Invariant: a write that the server
//! refused for its condition is `StoreError::Conflict`, never retried into an overwrite.

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::store::{Bucket, StoreError};

/// What a conditional PUT requires of the object already at its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No object there (`If-None-Match: *`).
    Absent,
    /// The object there has this ETag (`If-Match`), as a PUT or GET returned it.
    Matches(String),
}

/// How a conditional PUT ended.
enum Outcome {
    Written(Option<String>),
    Refused,
    /// The store cannot express the condition (object_store's local store has no If-Match).
    Unsupported,
}

/// An ETag no object has (the MD5 of nothing is `d41d8cd9…`, never all zeros).
const STALE_ETAG: &str = "\"00000000000000000000000000000000\"";

/// How the server wants an If-Match ETag written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EtagForm {
    /// `"d41d…"`, as returned (RFC 9110 §8.8.3; AWS S3, moto).
    Quoted,
    /// `d41d…` (Ceph RGW 16).
    Bare,
}

impl EtagForm {
    fn write(self, etag: &str) -> String {
        let bare = etag.trim_matches('"');
        match self {
            Self::Quoted => format!("\"{bare}\""),
            Self::Bare => bare.to_owned(),
        }
    }
}

impl Bucket {
    /// Whether the server honours both conditions (a second create refused, a stale If-Match
    /// refused), probed on first use with three small PUTs and a DELETE of a scratch key, then
    /// remembered for the life of this `Bucket`.
    pub async fn conditional_writes(&self) -> Result<bool, StoreError> {
        Ok(self.etag_form().await?.is_some())
    }

    /// The If-Match form the server takes, or `None` when it does not honour conditions.
    async fn etag_form(&self) -> Result<Option<EtagForm>, StoreError> {
        if let Some(known) = self.conditional.get() {
            return Ok(*known);
        }
        let key = format!(
            "gateway/probe/{}-{}",
            crate::clock::unix_millis(),
            std::process::id()
        );
        let probed = self.probe(&key).await;
        // The scratch key goes whatever the answer; a failed delete only leaves 1 byte behind.
        let _ = self.delete(&key).await;
        let form = probed?;
        let _ = self.conditional.set(form);
        tracing::info!(
            bucket = %self.describe,
            honoured = form.is_some(),
            etag_form = ?form,
            "probed the bucket's conditional writes"
        );
        Ok(form)
    }

    /// A create, a second create (refused?), a stale If-Match (refused?), then the real ETag
    /// in each form until one is taken.
    async fn probe(&self, key: &str) -> Result<Option<EtagForm>, StoreError> {
        let once = |b: &'static [u8]| Bytes::from_static(b);
        let Outcome::Written(etag) = self.put_mode(key, once(b"1"), PutMode::Create).await? else {
            return Err(self.other(key, "a create of an absent scratch key was refused"));
        };
        if !matches!(
            self.put_mode(key, once(b"2"), PutMode::Create).await?,
            Outcome::Refused
        ) {
            return Ok(None);
        }
        if !matches!(
            self.put_mode(key, once(b"3"), if_match(STALE_ETAG)).await?,
            Outcome::Refused
        ) {
            return Ok(None);
        }
        let Some(etag) = etag else {
            return Ok(None);
        };
        for form in [EtagForm::Quoted, EtagForm::Bare] {
            match self
                .put_mode(key, once(b"4"), if_match(&form.write(&etag)))
                .await?
            {
                Outcome::Written(_) => return Ok(Some(form)),
                Outcome::Unsupported => return Ok(None),
                Outcome::Refused => {}
            }
        }
        Ok(None)
    }

    /// PUTs `data` at `key` if `condition` holds; returns the new ETag. A refusal is
    /// `StoreError::Conflict`. On a server that ignores conditions this is a plain PUT: ask
    /// [`Bucket::conditional_writes`] before resting anything on it.
    pub async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        condition: &Precondition,
    ) -> Result<Option<String>, StoreError> {
        let mode = match condition {
            Precondition::Absent => PutMode::Create,
            Precondition::Matches(etag) => match self.etag_form().await? {
                Some(form) => if_match(&form.write(etag)),
                None => if_match(etag),
            },
        };
        match self.put_mode(key, data, mode).await? {
            Outcome::Written(etag) => Ok(etag),
            Outcome::Refused => Err(StoreError::Conflict {
                bucket: self.describe.clone(),
                key: key.to_owned(),
                by: "another writer".to_owned(),
            }),
            Outcome::Unsupported => Err(self.other(key, "this store has no conditional writes")),
        }
    }

    /// PUTs `data` at `key` only if no object is there (If-None-Match: *); `Ok(false)` when the
    /// server refused because one is. Servers that ignore the condition (Garage 2.5) overwrite
    /// and answer `Ok(true)`: callers must not rest correctness on it there
    /// (docs/compatibility.md).
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        match self.put_if(key, data, &Precondition::Absent).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// An object's bytes and its ETag (quotes kept, as If-Match wants it back).
    pub async fn get_tagged(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        let result = self
            .inner
            .get(&ObjectPath::from(key))
            .await
            .map_err(|e| self.classify(e, "get", key))?;
        let etag = result.meta.e_tag.clone();
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.classify(e, "get", key))?;
        self.download_limit.acquire(bytes.len() as u64).await;
        self.traffic
            .count(&self.traffic.gets, &self.traffic.get_bytes, bytes.len());
        Ok((bytes, etag))
    }

    async fn put_mode(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Outcome, StoreError> {
        self.upload_limit.acquire(data.len() as u64).await;
        self.traffic
            .count(&self.traffic.puts, &self.traffic.put_bytes, data.len());
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&ObjectPath::from(key), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(r) => Ok(Outcome::Written(r.e_tag)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Outcome::Refused),
            Err(object_store::Error::NotImplemented { .. }) => Ok(Outcome::Unsupported),
            Err(e) => Err(self.classify(e, "put", key)),
        }
    }

    fn other(&self, key: &str, detail: &str) -> StoreError {
        StoreError::Other {
            bucket: self.describe.clone(),
            op: "conditional put",
            key: key.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

fn if_match(etag: &str) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: Some(etag.to_owned()),
        version: None,
    })
}
