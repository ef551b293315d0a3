//! A server difference injected on purpose: the same bucket, but every multipart ETag the server
//! reports loses its `-<parts>` suffix (the form some S3 implementations use, e.g. one opaque
//! hash per object). The compatibility suite must fail on it, naming the ETag; a suite that
//! passed would be one that cannot see the differences it exists to find.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::config::BucketConfig;
use crate::store::{Bucket, StoreError};

/// `cfg`'s bucket, seen through a server that reports multipart ETags without `-<parts>`.
pub fn with_unsuffixed_multipart_etags(cfg: &BucketConfig) -> Result<Bucket, StoreError> {
    let b = Bucket::open(cfg, false)?;
    let inner: Arc<dyn ObjectStore> = Arc::new(Unsuffixed(b.inner.clone()));
    Ok(Bucket {
        inner: inner.clone(),
        probe: inner,
        raw: None,
        ..b
    })
}

#[derive(Debug)]
struct Unsuffixed(Arc<dyn ObjectStore>);

impl std::fmt::Display for Unsuffixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unsuffixed({})", self.0)
    }
}

fn strip(etag: Option<String>) -> Option<String> {
    etag.map(|e| match e.trim_matches('"').split_once('-') {
        Some((hash, _)) => format!("\"{hash}\""),
        None => e,
    })
}

fn meta(m: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        e_tag: strip(m.e_tag),
        ..m
    }
}

#[async_trait]
impl ObjectStore for Unsuffixed {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let r = self.0.put_opts(location, payload, opts).await?;
        Ok(PutResult {
            e_tag: strip(r.e_tag),
            ..r
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let r = self.0.get_opts(location, options).await?;
        Ok(GetResult {
            meta: meta(r.meta.clone()),
            ..r
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix).map(|m| m.map(meta)).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0
            .list_with_offset(prefix, offset)
            .map(|m| m.map(meta))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let r = self.0.list_with_delimiter(prefix).await?;
        Ok(ListResult {
            objects: r.objects.into_iter().map(meta).collect(),
            ..r
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}
