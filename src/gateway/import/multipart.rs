//! Multipart uploads into the device: parts stored as segments under sealed part records, an
//! upload completed into one object whose segment list is the parts' lists in order.
//!
//! S3's rules (parts 1..=10000, every part but the last at least 5 MiB, the listed ETags
//! matching the stored parts, ascending order) are enforced at completion. Invariant: the
//! completed object's SHA-256 is computed from the stored, authenticated segments, so the
//! manifest hashes what the device holds.

use std::sync::Arc;

use crate::gateway::GatewayError;
use crate::gateway::import::device::{Device, ObjectAttrs, PutResult};
use crate::gateway::import::record::{
    self, ExpectedDigests, ObjectRecord, PartRecord, UploadRecord,
};
use crate::gateway::import::segments::SegmentWriter;
use crate::store::device::{Sha256, multipart_etag};
use crate::store::keys::{hex, parse_hex};

/// S3's part number range and minimum part size (all but the last part).
const MAX_PART_NUMBER: u32 = 10_000;
const MIN_PART_BYTES: u64 = 5 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub upload_id: String,
    pub key: String,
    pub initiated_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub number: u32,
    pub size: u64,
    pub etag: String,
    pub modified_unix: i64,
}

impl Device {
    pub fn create_upload(&self, key: &str, attrs: ObjectAttrs) -> Result<String, GatewayError> {
        self.check_writable()?;
        Self::check_key(key)?;
        let raw =
            crate::store::device::new_salt().map_err(|e| GatewayError::Internal(Box::new(e)))?;
        let upload_id = hex(&raw);
        let rec = UploadRecord {
            key: key.to_owned(),
            content_type: attrs.content_type,
            metadata: attrs.metadata,
        };
        let sealed = record::seal(
            &self.inner.codec,
            &record::upload_aad(&self.inner.job, &upload_id),
            &rec,
        )?;
        self.inner
            .catalog
            .insert_job_upload(&self.inner.job, &upload_id, &sealed)?;
        Ok(upload_id)
    }

    fn upload(&self, key: &str, upload_id: &str) -> Result<UploadRecord, GatewayError> {
        let missing = || GatewayError::NotFound(format!("upload {upload_id}"));
        if upload_id.len() != 32 || parse_hex::<16>(upload_id).is_none() {
            return Err(missing());
        }
        let sealed = self
            .inner
            .catalog
            .job_upload(&self.inner.job, upload_id)?
            .ok_or_else(missing)?;
        let rec: UploadRecord = record::open(
            &self.inner.codec,
            &record::upload_aad(&self.inner.job, upload_id),
            sealed,
        )?;
        if rec.key != key {
            return Err(missing());
        }
        Ok(rec)
    }

    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: SegmentWriter,
        expected: ExpectedDigests,
    ) -> Result<String, GatewayError> {
        self.check_writable()?;
        if !(1..=MAX_PART_NUMBER).contains(&number) {
            return Err(GatewayError::InvalidArgument(format!(
                "part number {number} is outside 1..={MAX_PART_NUMBER}"
            )));
        }
        self.upload(key, upload_id)?;
        let written = data.finish(expected).await?;
        let rec = PartRecord {
            size: written.size,
            md5: written.etag,
            sha256: hex(&written.sha256),
            modified_unix: crate::clock::unix_secs(),
            segments: written.segments,
        };
        let sealed = record::seal(
            &self.inner.codec,
            &record::part_aad(&self.inner.job, upload_id, number),
            &rec,
        )?;
        let old = match self.inner.catalog.put_job_part(
            &self.inner.job,
            upload_id,
            number,
            &sealed,
            rec.size,
        ) {
            Ok(old) => old,
            Err(e) => {
                self.inner.segs.remove(&rec.segments).await;
                return Err(e.into());
            }
        };
        if let Some(old) = old
            && let Ok(old) = self.open_part(upload_id, number, old)
        {
            self.inner.segs.remove(&old.segments).await;
        }
        Ok(rec.md5)
    }

    fn open_part(
        &self,
        upload_id: &str,
        number: u32,
        sealed: Vec<u8>,
    ) -> Result<PartRecord, GatewayError> {
        record::open(
            &self.inner.codec,
            &record::part_aad(&self.inner.job, upload_id, number),
            sealed,
        )
    }

    fn parts(&self, upload_id: &str) -> Result<Vec<(u32, PartRecord)>, GatewayError> {
        self.inner
            .catalog
            .job_parts(&self.inner.job, upload_id)?
            .into_iter()
            .map(|(n, sealed, _)| Ok((n, self.open_part(upload_id, n, sealed)?)))
            .collect()
    }

    pub fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, GatewayError> {
        self.upload(key, upload_id)?;
        Ok(self
            .parts(upload_id)?
            .into_iter()
            .map(|(number, p)| PartInfo {
                number,
                size: p.size,
                etag: p.md5,
                modified_unix: p.modified_unix,
            })
            .collect())
    }

    /// Uploads in progress whose key starts with `prefix`, by key.
    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadInfo>, GatewayError> {
        let mut out = Vec::new();
        for (upload_id, sealed, created) in self.inner.catalog.job_uploads(&self.inner.job)? {
            let aad = record::upload_aad(&self.inner.job, &upload_id);
            let rec: UploadRecord = record::open(&self.inner.codec, &aad, sealed)?;
            if rec.key.starts_with(prefix) {
                out.push(UploadInfo {
                    upload_id,
                    key: rec.key,
                    initiated_unix: created,
                });
            }
        }
        out.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(a.initiated_unix.cmp(&b.initiated_unix))
        });
        Ok(out)
    }

    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), GatewayError> {
        self.upload(key, upload_id)?;
        let parts = self.parts(upload_id)?;
        self.inner
            .catalog
            .finish_job_upload(&self.inner.job, upload_id, None)?;
        for (_, p) in parts {
            self.inner.segs.remove(&p.segments).await;
        }
        Ok(())
    }

    /// Completes an upload from the listed (part number, ETag) pairs.
    pub async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        listed: &[(u32, String)],
    ) -> Result<PutResult, GatewayError> {
        self.check_writable()?;
        let upload = self.upload(key, upload_id)?;
        if listed.is_empty() {
            return Err(GatewayError::InvalidArgument(
                "a multipart upload needs at least one part".into(),
            ));
        }
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(GatewayError::InvalidArgument(
                "InvalidPartOrder: parts must be listed in ascending order".into(),
            ));
        }
        let stored: std::collections::HashMap<u32, PartRecord> =
            self.parts(upload_id)?.into_iter().collect();
        let mut chosen = Vec::with_capacity(listed.len());
        for (i, (number, etag)) in listed.iter().enumerate() {
            let part = stored
                .get(number)
                .filter(|p| p.md5 == etag.trim_matches('"'));
            let Some(part) = part else {
                return Err(GatewayError::InvalidArgument(format!(
                    "InvalidPart: part {number} was not uploaded or its ETag differs"
                )));
            };
            if i + 1 < listed.len() && part.size < MIN_PART_BYTES {
                return Err(GatewayError::InvalidArgument(format!(
                    "EntityTooSmall: part {number} is {} bytes; all but the last part need 5 MiB",
                    part.size
                )));
            }
            chosen.push(part.clone());
        }
        let mut md5s = Vec::with_capacity(chosen.len());
        let mut segments = Vec::new();
        let mut size = 0u64;
        let parts = chosen.iter().map(|p| p.size).collect();
        for p in &chosen {
            md5s.push(parse_hex::<16>(&p.md5).ok_or_else(|| {
                GatewayError::Corrupt(
                    format!("part record of upload {upload_id} is malformed").into(),
                )
            })?);
            segments.extend(p.segments.iter().cloned());
            size += p.size;
        }
        let mut rec = ObjectRecord {
            key: key.to_owned(),
            size,
            sha256: String::new(),
            etag: multipart_etag(&md5s),
            content_type: upload.content_type,
            metadata: upload.metadata,
            modified_unix: crate::clock::unix_secs(),
            segments,
            parts,
            committed_by: None,
        };
        // The whole object's SHA-256 from what the device holds (each segment authenticated).
        let mut sha = Sha256::default();
        let mut stream = crate::gateway::import::device::segment_stream(
            self.inner.segs.clone(),
            Arc::new(rec.clone()),
            0..size,
        );
        use futures::StreamExt;
        while let Some(piece) = stream.next().await {
            sha.update(&piece?);
        }
        rec.sha256 = hex(&sha.finish());

        let _guard = self.inner.commit.lock().await;
        self.check_writable()?;
        let name_id = crate::store::device::name_id(&self.inner.key, key);
        let sealed = record::seal(
            &self.inner.codec,
            &record::object_aad(&self.inner.job, &name_id),
            &rec,
        )?;
        self.publish(&name_id, &sealed).await?;
        self.inner.catalog.finish_job_upload(
            &self.inner.job,
            upload_id,
            Some((&name_id, &sealed, size)),
        )?;
        let result = PutResult {
            etag: rec.etag.clone(),
            size,
            sha256: rec.sha256.clone(),
        };
        let used: std::collections::HashSet<u32> = listed.iter().map(|(n, _)| *n).collect();
        let rec = Arc::new(rec);
        let old = self
            .inner
            .index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), rec.clone());
        self.inner.functions.committed(&rec);
        if let Some(old) = old {
            self.inner.segs.remove(&old.segments).await;
        }
        for (n, p) in stored {
            if !used.contains(&n) {
                self.inner.segs.remove(&p.segments).await;
            }
        }
        Ok(result)
    }
}
