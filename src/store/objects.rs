//! Plain objects for the file gateway (docs/design.md §2 `shares/`): stored as written, with user
//! metadata, readable by any S3 tool. No framing, no encryption.
//!
//! Keys are taken verbatim (`Path::parse`, never the percent-encoding `Path::from`), so a file
//! name maps 1:1 to a key. A key object_store cannot express (control characters, empty or
//! `.`/`..` segments) is `StoreError::Other` naming it. Invariant: user metadata is sent and read
//! back with lower-case keys; a `file://` bucket keeps none (the catalog still has it).

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyOptions, GetOptions, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::store::{Bucket, PART_CONCURRENCY, StoreError};

/// What a HEAD (or a listing plus HEAD) tells about an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: Option<String>,
    pub modified_ns: i64,
    /// User metadata, keys lower-cased, in the order the store returned them.
    pub metadata: Vec<(String, String)>,
    pub content_type: Option<String>,
}

/// One level of a listing: the objects directly below a prefix and the sub-prefixes.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// (key, size, etag, modified_ns)
    pub objects: Vec<(String, u64, Option<String>, i64)>,
    /// Common prefixes, without their trailing `/`.
    pub prefixes: Vec<String>,
}

impl Bucket {
    pub(super) fn object_path(
        &self,
        op: &'static str,
        key: &str,
    ) -> Result<ObjectPath, StoreError> {
        ObjectPath::parse(key).map_err(|e| StoreError::Other {
            bucket: self.describe.clone(),
            op,
            key: key.to_owned(),
            detail: format!("not a usable object key: {e}"),
        })
    }

    pub(super) fn attributes(&self, metadata: &[(String, String)]) -> Attributes {
        let mut attrs = Attributes::new();
        if self.user_metadata {
            for (k, v) in metadata {
                attrs.insert(
                    Attribute::Metadata(k.clone().into()),
                    AttributeValue::from(v.clone()),
                );
            }
        }
        attrs
    }

    /// False for a `file://` bucket, which stores no user metadata.
    pub fn keeps_user_metadata(&self) -> bool {
        self.user_metadata
    }

    /// PUTs `data` at `key` with user metadata; returns the new ETag if the store gave one.
    pub async fn put_object(
        &self,
        key: &str,
        data: Bytes,
        metadata: &[(String, String)],
    ) -> Result<Option<String>, StoreError> {
        let path = self.object_path("put", key)?;
        self.upload_limit.acquire(data.len() as u64).await;
        let result = self
            .inner
            .put_opts(
                &path,
                PutPayload::from_bytes(data),
                PutOptions::from(self.attributes(metadata)),
            )
            .await
            .map_err(|e| self.classify(e, "put", key))?;
        Ok(result.e_tag)
    }

    /// Uploads a local file as the object `key`: one PUT below the multipart threshold, else a
    /// multipart upload with parts read from the file and several in flight.
    pub async fn put_file(
        &self,
        key: &str,
        file: &Path,
        metadata: &[(String, String)],
    ) -> Result<Option<String>, StoreError> {
        let local = |e: std::io::Error| StoreError::Other {
            bucket: self.describe.clone(),
            op: "upload",
            key: key.to_owned(),
            detail: format!("reading {}: {e}", file.display()),
        };
        let mut f = tokio::fs::File::open(file).await.map_err(local)?;
        let size = f.metadata().await.map_err(local)?.len();
        if size < self.multipart_threshold {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            f.read_to_end(&mut buf).await.map_err(local)?;
            return self.put_object(key, Bytes::from(buf), metadata).await;
        }
        let path = self.object_path("put", key)?;
        let upload = self
            .inner
            .put_multipart_opts(&path, PutMultipartOptions::from(self.attributes(metadata)))
            .await
            .map_err(|e| self.classify(e, "start multipart upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut left = size;
        while left > 0 {
            writer
                .wait_for_capacity(PART_CONCURRENCY)
                .await
                .map_err(|e| self.classify(e, "upload part of", key))?;
            let n = usize::try_from(left.min(self.part_size as u64)).unwrap_or(self.part_size);
            let mut piece = vec![0u8; n];
            f.read_exact(&mut piece).await.map_err(local)?;
            self.upload_limit.acquire(n as u64).await;
            writer.put(Bytes::from(piece));
            left -= n as u64;
        }
        writer
            .finish()
            .await
            .map_err(|e| self.classify(e, "complete multipart upload of", key))?;
        // A multipart completion does not hand back the final ETag through WriteMultipart.
        Ok(self.head_object(key).await?.and_then(|h| h.etag))
    }

    /// Size, ETag, time and user metadata of an object, or `None` if there is none.
    pub async fn head_object(&self, key: &str) -> Result<Option<ObjectHead>, StoreError> {
        let path = self.object_path("head", key)?;
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.inner.get_opts(&path, opts).await {
            Ok(r) => Ok(Some(head_of(&r))),
            Err(e) => match self.classify(e, "head", key) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Bytes `range` of an object together with what a HEAD would tell (the whole object's
    /// size, ETag, content type and user metadata): one request where a HEAD and a GET would
    /// be two.
    pub async fn read_object_with_head(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<(ObjectHead, Bytes), StoreError> {
        let path = self.object_path("get", key)?;
        let len = range.end.saturating_sub(range.start);
        self.download_limit.acquire(len).await;
        let opts = GetOptions {
            range: Some(range.into()),
            ..GetOptions::default()
        };
        let r = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(|e| self.classify(e, "get range of", key))?;
        let head = head_of(&r);
        let data = r
            .bytes()
            .await
            .map_err(|e| self.classify(e, "get range of", key))?;
        self.traffic
            .count(&self.traffic.gets, &self.traffic.get_bytes, data.len());
        Ok((head, data))
    }

    /// The length of part `part` of a multipart object and the object's part count, from the
    /// server (HeadObject with `partNumber`); `None` where the store cannot say (a `file://`
    /// bucket, or a server that ignores the parameter).
    pub async fn part_length(
        &self,
        key: &str,
        part: u32,
    ) -> Result<Option<(u64, u32)>, StoreError> {
        match &self.raw {
            Some(raw) => raw.head_part(key, part).await,
            None => Ok(None),
        }
    }

    /// Server-side copy; the copy keeps the source's user metadata.
    pub async fn copy_object(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let src = self.object_path("copy", from)?;
        let dst = self.object_path("copy", to)?;
        self.inner
            .copy_opts(&src, &dst, CopyOptions::default())
            .await
            .map_err(|e| self.classify(e, "copy", from))
    }

    /// Whether `put_patched` can build an object from server-side copies of another's parts.
    pub fn can_copy_parts(&self) -> bool {
        self.raw.is_some() && self.user_metadata
    }

    /// The multipart part size, the unit `put_patched` copies or uploads.
    pub fn part_size(&self) -> u64 {
        self.part_size as u64
    }

    /// Uploads `file` (`size` bytes) as `key` in parts of `part_size`: part `i` comes from the
    /// file when `local(i)`, else is copied server-side from the same byte range of `source`
    /// (UploadPartCopy), so unchanged ranges of a large object are never downloaded. Parts go
    /// up 4 at a time; a failure aborts the upload. Returns the new object's ETag.
    pub async fn put_patched(
        &self,
        key: &str,
        file: &Path,
        size: u64,
        source: &str,
        local: &(dyn Fn(u64) -> bool + Sync),
        metadata: &[(String, String)],
    ) -> Result<Option<String>, StoreError> {
        let Some(raw) = &self.raw else {
            return self.put_file(key, file, metadata).await;
        };
        let part = self.part_size as u64;
        let upload_id = raw.create_multipart(key, metadata, None).await?;
        let parts = size.div_ceil(part).max(1);
        let results: Vec<Result<String, StoreError>> = futures::stream::iter(0..parts)
            .map(|i| {
                let upload_id = &upload_id;
                async move {
                    let start = i * part;
                    let end = (start + part).min(size);
                    let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
                    if local(i) || end == start {
                        let data =
                            read_range(file, start, end)
                                .await
                                .map_err(|e| StoreError::Other {
                                    bucket: self.describe.clone(),
                                    op: "upload",
                                    key: key.to_owned(),
                                    detail: format!("reading {}: {e}", file.display()),
                                })?;
                        self.upload_limit.acquire(data.len() as u64).await;
                        raw.upload_part(key, upload_id, number, data, None).await
                    } else {
                        raw.upload_part_copy(key, upload_id, number, source, start..=end - 1)
                            .await
                    }
                }
            })
            .buffered(PART_CONCURRENCY)
            .collect()
            .await;
        let etags = match results.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(etags) => etags,
            Err(e) => {
                self.abort_resumable(key, &upload_id).await;
                return Err(e);
            }
        };
        match raw.complete_multipart(key, &upload_id, &etags).await {
            Ok(etag) => Ok(etag),
            Err(e) => {
                self.abort_resumable(key, &upload_id).await;
                Err(e)
            }
        }
    }

    /// Writes the directory marker `key` (ending in `/`) with metadata. Returns false when the
    /// bucket cannot hold markers (`file://`), where directories are implied only.
    pub async fn put_marker(
        &self,
        key: &str,
        metadata: &[(String, String)],
    ) -> Result<bool, StoreError> {
        match &self.raw {
            Some(raw) => raw.put_empty(key, metadata).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Server-side copy of `from` to `to` (the same key to change metadata in place) with
    /// `metadata` replacing the source's. Returns false when the bucket cannot do it, so the
    /// caller re-uploads instead.
    pub async fn copy_with_metadata(
        &self,
        from: &str,
        to: &str,
        metadata: &[(String, String)],
    ) -> Result<bool, StoreError> {
        match &self.raw {
            Some(raw) if self.user_metadata => raw
                .copy_replacing_metadata(from, to, metadata)
                .await
                .map(|()| true),
            _ => Ok(false),
        }
    }

    /// Deletes a plain object or a directory marker (`key` ending in `/`); a missing one is fine.
    pub async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        if key.ends_with('/') {
            return match &self.raw {
                Some(raw) => raw.delete(key).await,
                None => Ok(()),
            };
        }
        let path = self.object_path("delete", key)?;
        match self.inner.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) => match self.classify(e, "delete", key) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Ranged read of a plain object (`end` is clamped by the store to the object's size).
    pub async fn read_object(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let path = self.object_path("get", key)?;
        self.download_limit
            .acquire(range.end.saturating_sub(range.start))
            .await;
        self.inner
            .get_range(&path, range)
            .await
            .map_err(|e| self.classify(e, "get range of", key))
    }

    /// The objects and sub-prefixes directly below `prefix` (which ends in `/`, or is empty).
    pub async fn list_level(&self, prefix: &str) -> Result<Listing, StoreError> {
        let trimmed = prefix.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            None
        } else {
            Some(self.object_path("list", trimmed)?)
        };
        let result = self
            .inner
            .list_with_delimiter(path.as_ref())
            .await
            .map_err(|e| self.classify(e, "list", prefix))?;
        Ok(Listing {
            objects: result
                .objects
                .into_iter()
                .map(|m| {
                    (
                        m.location.to_string(),
                        m.size,
                        m.e_tag,
                        m.last_modified.timestamp_nanos_opt().unwrap_or(0),
                    )
                })
                .collect(),
            prefixes: result
                .common_prefixes
                .into_iter()
                .map(|p| p.to_string())
                .collect(),
        })
    }
}

fn head_of(r: &object_store::GetResult) -> ObjectHead {
    let mut head = ObjectHead {
        size: r.meta.size,
        etag: r.meta.e_tag.clone(),
        modified_ns: r.meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
        ..ObjectHead::default()
    };
    for (k, v) in r.attributes.iter() {
        match k {
            Attribute::Metadata(name) => head
                .metadata
                .push((name.to_ascii_lowercase(), v.as_ref().to_owned())),
            Attribute::ContentType => head.content_type = Some(v.as_ref().to_owned()),
            _ => {}
        }
    }
    head
}

/// Bytes `start..end` of a local file.
pub async fn read_range(file: &Path, start: u64, end: u64) -> std::io::Result<Bytes> {
    let mut f = tokio::fs::File::open(file).await?;
    f.seek(std::io::SeekFrom::Start(start)).await?;
    let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}
