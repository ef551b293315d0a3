//! Plain objects written piece by piece, for the bulk import (DESIGN §7): the caller streams an
//! object's bytes from the device and decides at the end whether it is committed (`finish`) or
//! dropped (`abort`, e.g. when the device data did not verify), so a bad object never appears.
//!
//! Invariant: an upload whose `finish` did not return Ok leaves no object at the key (a single
//! PUT is sent only at `finish`; a multipart upload is completed only there).

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};

use crate::store::{Bucket, PART_CONCURRENCY, StoreError};

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
