//! Plain objects written piece by piece, for the bulk import (docs/design.md §7): the caller
//! streams an object's bytes from the device and decides at the end whether it is committed
//! (`finish`) or dropped (`abort`, e.g. when the device data did not verify), so a bad object never
//! appears.
//!
//! Invariant: an upload whose `finish` did not return Ok leaves no object at the key (a single
//! PUT is sent only at `finish`; a multipart upload is completed only there).

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};

use crate::store::{Bucket, PART_CONCURRENCY, StoreError, raw};

/// An object being written. Below the multipart threshold the bytes are held and sent in one
/// PUT at `finish`; above it, parts of exactly `part_size` go up as they fill (so the final
/// ETag is predictable: see `store::device::multipart_etag`).
pub struct ObjectUpload<'a> {
    bucket: &'a Bucket,
    key: String,
    path: ObjectPath,
    attrs: Attributes,
    state: UploadState,
}

enum UploadState {
    Single(BytesMut),
    Multi(WriteMultipart),
}

impl std::fmt::Debug for ObjectUpload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectUpload({})", self.key)
    }
}

impl Bucket {
    /// Starts writing `key` (`size` bytes in all) with a content type and user metadata.
    pub async fn start_upload(
        &self,
        key: &str,
        size: u64,
        content_type: Option<&str>,
        metadata: &[(String, String)],
    ) -> Result<ObjectUpload<'_>, StoreError> {
        let path = self.object_path("put", key)?;
        let mut attrs = self.attributes(metadata);
        if let Some(ct) = content_type.filter(|_| self.user_metadata) {
            attrs.insert(Attribute::ContentType, AttributeValue::from(ct.to_owned()));
        }
        let state = if size < self.multipart_threshold {
            UploadState::Single(BytesMut::with_capacity(usize::try_from(size).unwrap_or(0)))
        } else {
            let upload = self
                .inner
                .put_multipart_opts(&path, PutMultipartOptions::from(attrs.clone()))
                .await
                .map_err(|e| self.classify(e, "start multipart upload of", key))?;
            UploadState::Multi(WriteMultipart::new_with_chunk_size(upload, self.part_size))
        };
        Ok(ObjectUpload {
            bucket: self,
            key: key.to_owned(),
            path,
            attrs,
            state,
        })
    }

    /// The size from which `start_upload` uses a multipart upload.
    pub fn multipart_threshold(&self) -> u64 {
        self.multipart_threshold
    }
}

impl ObjectUpload<'_> {
    /// Whether this object goes up as a multipart upload (parts of `Bucket::part_size`).
    pub fn is_multipart(&self) -> bool {
        matches!(self.state, UploadState::Multi(_))
    }

    /// Appends bytes; with a multipart upload, waits while too many parts are in flight, so
    /// memory stays bounded by a few parts.
    pub async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        let bucket = self.bucket;
        match &mut self.state {
            UploadState::Single(buf) => buf.extend_from_slice(&data),
            UploadState::Multi(writer) => {
                writer
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(|e| bucket.classify(e, "upload part of", &self.key))?;
                bucket.upload_limit.acquire(data.len() as u64).await;
                bucket
                    .traffic
                    .count(&bucket.traffic.puts, &bucket.traffic.put_bytes, data.len());
                writer.put(data);
            }
        }
        Ok(())
    }

    /// Commits the object.
    pub async fn finish(self) -> Result<(), StoreError> {
        let bucket = self.bucket;
        match self.state {
            UploadState::Single(buf) => {
                let data = buf.freeze();
                bucket.upload_limit.acquire(data.len() as u64).await;
                bucket
                    .traffic
                    .count(&bucket.traffic.puts, &bucket.traffic.put_bytes, data.len());
                bucket
                    .inner
                    .put_opts(
                        &self.path,
                        PutPayload::from_bytes(data),
                        PutOptions::from(self.attrs),
                    )
                    .await
                    .map_err(|e| bucket.classify(e, "put", &self.key))?;
            }
            UploadState::Multi(writer) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| bucket.classify(e, "complete multipart upload of", &self.key))?;
            }
        }
        Ok(())
    }

    /// Drops the object: nothing is committed, parts already sent are discarded.
    pub async fn abort(self) {
        if let UploadState::Multi(writer) = self.state
            && let Err(e) = writer.abort().await
        {
            tracing::warn!(key = %self.key, error = %e, "aborting a multipart upload failed");
        }
    }
}

/// A part sent by [`Bucket::send_checked_part`]: what its completion needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPart {
    pub etag: String,
    /// Base64 of the big-endian CRC32C.
    pub crc32c: String,
}

/// A part of an unfinished multipart upload, as the target lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: u32,
    pub size: u64,
    /// Without quotes.
    pub etag: String,
}

/// Multipart uploads whose upload id the caller keeps, so that a later process can continue
/// one (the import after a crash or a lost network): parts already in the target are listed
/// and not sent again.
impl Bucket {
    /// Whether uploads can be continued by upload id: S3 targets with signed requests, not
    /// `file://`.
    pub fn can_resume_uploads(&self) -> bool {
        self.raw.is_some() && self.user_metadata
    }

    fn resumable(&self, op: &'static str, key: &str) -> Result<&raw::RawS3, StoreError> {
        self.raw.as_ref().ok_or_else(|| StoreError::Other {
            bucket: self.describe.clone(),
            op,
            key: key.to_owned(),
            detail: "resumable uploads need an s3:// bucket".into(),
        })
    }

    /// Starts a multipart upload of `key`; returns the upload id to keep.
    pub async fn begin_resumable(
        &self,
        key: &str,
        content_type: Option<&str>,
        metadata: &[(String, String)],
    ) -> Result<String, StoreError> {
        self.resumable("start multipart upload of", key)?
            .create_multipart(key, metadata, content_type)
            .await
    }

    /// The parts the target holds for `upload_id`; `None` if it no longer knows the upload.
    pub async fn resumable_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Vec<UploadedPart>>, StoreError> {
        let parts = self
            .resumable("list parts of", key)?
            .list_parts(key, upload_id)
            .await?;
        Ok(parts.map(|ps| {
            ps.into_iter()
                .map(|(number, size, etag)| UploadedPart { number, size, etag })
                .collect()
        }))
    }

    /// Sends part `number` (1-based) whose MD5 is `md5`; the target refuses it if the bytes it
    /// received differ. Returns the part's ETag.
    pub async fn send_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
        md5: &[u8; 16],
    ) -> Result<String, StoreError> {
        let raw = self.resumable("upload part of", key)?;
        self.upload_limit.acquire(data.len() as u64).await;
        self.traffic
            .count(&self.traffic.puts, &self.traffic.put_bytes, data.len());
        raw.upload_part(key, upload_id, number, data, Some(md5))
            .await
    }

    /// Starts a multipart upload whose parts carry CRC32Cs ([`Self::send_checked_part`]);
    /// returns the upload id to keep.
    pub async fn begin_checked(
        &self,
        key: &str,
        metadata: &[(String, String)],
    ) -> Result<String, StoreError> {
        self.resumable("start multipart upload of", key)?
            .create_multipart_crc32c(key, metadata)
            .await
    }

    /// Sends part `number` (1-based) of a [`Self::begin_checked`] upload with its CRC32C,
    /// which the target checks.
    pub async fn send_checked_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<CheckedPart, StoreError> {
        let raw = self.resumable("upload part of", key)?;
        self.upload_limit.acquire(data.len() as u64).await;
        self.traffic
            .count(&self.traffic.puts, &self.traffic.put_bytes, data.len());
        let (etag, crc32c) = raw.upload_part_crc32c(key, upload_id, number, data).await?;
        Ok(CheckedPart { etag, crc32c })
    }

    /// Commits a [`Self::begin_checked`] upload from its parts in part order; returns the
    /// object's ETag when the target tells it.
    pub async fn complete_checked(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CheckedPart],
    ) -> Result<Option<String>, StoreError> {
        let parts: Vec<(&str, Option<&str>)> = parts
            .iter()
            .map(|p| (p.etag.as_str(), Some(p.crc32c.as_str())))
            .collect();
        self.resumable("complete multipart upload of", key)?
            .complete_multipart_with(key, upload_id, &parts)
            .await
    }

    /// Commits the upload from its parts' ETags in part order; returns the object's ETag when
    /// the target tells it.
    pub async fn complete_resumable(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<Option<String>, StoreError> {
        self.resumable("complete multipart upload of", key)?
            .complete_multipart(key, upload_id, etags)
            .await
    }

    /// Abandons the upload and its parts.
    pub async fn abort_resumable(&self, key: &str, upload_id: &str) {
        if self.raw.is_none() {
            return;
        }
        if let Err(e) = self.abort_upload(key, upload_id).await {
            tracing::warn!(key, error = %e, "aborting a multipart upload failed");
        }
    }

    /// Aborts a multipart upload, saying whether that failed; an upload the target no longer
    /// has counts as aborted.
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.resumable("abort multipart upload of", key)?
            .abort_multipart(key, upload_id)
            .await
    }
}
