//! The device's data set as an `object_store::ObjectStore`, so the file gateway (`Files`, built on
//! `store::Bucket`) can run a share over it: a file written over NFS becomes a device object 1:1,
//! listed by the S3 endpoint, in the manifest and imported like any other
//! (docs/decisions/0009-device-nfs.md).
//!
//! Paths are `<root>/<key>`: the share needs a non-empty bucket prefix, so the store shows the
//! device's keys under one first segment (the bucket name) that it strips on the way in. User
//! metadata travels as `Attribute::Metadata`, content type as `Attribute::ContentType`.
//!
//! Must not: keep anything of its own (every call goes to the `Device`, which seals it under the
//! job key), or bypass the device's rules (sealed is read-only). Keys object_store cannot name
//! (empty or `.`/`..` segments, a trailing `/` as S3 directory markers have) are left out of
//! listings: S3 clients still see them, NFS clients do not.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyMode, CopyOptions, GetOptions, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::gateway::GatewayError;
use crate::gateway::import::device::{Device, ObjectAttrs, ObjectInfo};
use crate::gateway::import::record::ExpectedDigests;

/// Keys a listing asks the device for per page.
const PAGE: usize = 1000;
const STORE: &str = "device";

/// The device's objects under the first path segment `root`.
#[derive(Debug, Clone)]
pub struct DeviceObjects {
    device: Device,
    root: String,
}

impl fmt::Display for DeviceObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} ({})", self.device.job_id(), self.root)
    }
}

impl DeviceObjects {
    /// `root` is one path segment (the share's bucket prefix, no `/`).
    pub fn new(device: Device, root: &str) -> Self {
        Self {
            device,
            root: root.trim_matches('/').to_owned(),
        }
    }

    /// The device key of `location`, which must lie below the root.
    fn key(&self, location: &Path) -> object_store::Result<String> {
        location
            .as_ref()
            .strip_prefix(&self.root)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| object_store::Error::NotFound {
                path: location.to_string(),
                source: format!("outside the device's root {}", self.root).into(),
            })
    }

    /// The path of device key `key`, if object_store can name it.
    fn path(&self, key: &str) -> Option<Path> {
        if key.ends_with('/') {
            return None;
        }
        Path::parse(format!("{}/{key}", self.root)).ok()
    }

    /// The device key prefix a listing of `prefix` covers (segment-wise: `a` lists `a/...`).
    fn list_prefix(&self, prefix: Option<&Path>) -> Option<String> {
        let Some(p) = prefix else {
            return Some(String::new());
        };
        let p = p.as_ref();
        if p == self.root {
            return Some(String::new());
        }
        p.strip_prefix(&self.root)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| format!("{rest}/"))
    }
}

fn object_meta(location: Path, size: u64, etag: &str, modified_unix: i64) -> ObjectMeta {
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(modified_unix).unwrap_or(0));
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size,
        e_tag: Some(format!("\"{etag}\"")),
        version: None,
    }
}

/// The device's answer as object_store's error kinds (`store::Bucket` classifies those).
fn error(path: &str, e: GatewayError) -> object_store::Error {
    let path = path.to_owned();
    match e {
        GatewayError::NotFound(_) | GatewayError::Stale(_) => object_store::Error::NotFound {
            path,
            source: Box::new(e),
        },
        GatewayError::AlreadyExists(_) => object_store::Error::AlreadyExists {
            path,
            source: Box::new(e),
        },
        GatewayError::ReadOnly(_) | GatewayError::PermissionDenied(_) => {
            object_store::Error::PermissionDenied {
                path,
                source: Box::new(e),
            }
        }
        other => object_store::Error::Generic {
            store: STORE,
            source: Box::new(other),
        },
    }
}

/// Content type and user metadata from put attributes; others (cache control, encoding, ...)
/// are refused, as the trait asks, since the device would drop them.
fn object_attrs(attributes: &Attributes) -> object_store::Result<ObjectAttrs> {
    let mut out = ObjectAttrs::default();
    for (k, v) in attributes {
        match k {
            Attribute::Metadata(name) => out
                .metadata
                .push((name.to_ascii_lowercase(), v.as_ref().to_owned())),
            Attribute::ContentType => out.content_type = Some(v.as_ref().to_owned()),
            other => {
                return Err(object_store::Error::NotImplemented {
                    operation: format!("the attribute {other:?} on a device object"),
                    implementer: STORE.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

fn attributes(info: &ObjectInfo) -> Attributes {
    let mut out = Attributes::new();
    if let Some(ct) = &info.content_type {
        out.insert(Attribute::ContentType, AttributeValue::from(ct.clone()));
    }
    for (k, v) in &info.metadata {
        out.insert(
            Attribute::Metadata(k.clone().into()),
            AttributeValue::from(v.clone()),
        );
    }
    out
}

async fn write_payload(
    device: &Device,
    payload: PutPayload,
) -> Result<crate::gateway::import::SegmentWriter, GatewayError> {
    let mut writer = device.writer()?;
    for piece in payload {
        writer.write(piece).await?;
    }
    Ok(writer)
}

#[async_trait]
impl ObjectStore for DeviceObjects {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let key = self.key(location)?;
        if opts.mode != PutMode::Overwrite {
            // The device has no conditional writes; the file gateway never asks for them.
            return Err(object_store::Error::NotImplemented {
                operation: "a conditional put".to_owned(),
                implementer: STORE.to_owned(),
            });
        }
        let attrs = object_attrs(&opts.attributes)?;
        let writer = write_payload(&self.device, payload)
            .await
            .map_err(|e| error(&key, e))?;
        let put = self
            .device
            .put(&key, writer, attrs, ExpectedDigests::default())
            .await
            .map_err(|e| error(&key, e))?;
        Ok(PutResult {
            e_tag: Some(format!("\"{}\"", put.etag)),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let key = self.key(location)?;
        let attrs = object_attrs(&opts.attributes)?;
        let upload_id = self
            .device
            .create_upload(&key, attrs)
            .await
            .map_err(|e| error(&key, e))?;
        Ok(Box::new(DeviceUpload {
            device: self.device.clone(),
            key,
            upload_id,
            next: 0,
            parts: Arc::new(Mutex::new(Vec::new())),
            finished: false,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = self.key(location)?;
        // In a device cluster another device may have changed the object: its record first.
        self.device
            .sync_key(&key)
            .await
            .map_err(|e| error(&key, e))?;
        let info = self.device.head(&key).map_err(|e| error(&key, e))?;
        let meta = object_meta(location.clone(), info.size, &info.etag, info.modified_unix);
        options.check_preconditions(&meta)?;
        let range: Range<u64> = match &options.range {
            Some(r) => r
                .as_range(info.size)
                .map_err(|e| object_store::Error::Generic {
                    store: STORE,
                    source: Box::new(e),
                })?,
            None => 0..info.size,
        };
        let payload: BoxStream<'static, object_store::Result<Bytes>> = if options.head {
            futures::stream::empty().boxed()
        } else {
            let (_, stream) = self
                .device
                .read(&key, Some(range.clone()))
                .map_err(|e| error(&key, e))?;
            let path = key.clone();
            stream.map_err(move |e| error(&path, e)).boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: attributes(&info),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .and_then(move |location| {
                let this = this.clone();
                async move {
                    let key = this.key(&location)?;
                    this.device.delete(&key).await.map_err(|e| error(&key, e))?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(prefix) = self.list_prefix(prefix) else {
            return futures::stream::empty().boxed();
        };
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.device.list(&prefix, None, after.as_deref(), PAGE);
            for o in &page.objects {
                if let Some(path) = self.path(&o.key) {
                    out.push(Ok(object_meta(path, o.size, &o.etag, o.modified_unix)));
                }
            }
            match page.next_marker {
                Some(m) if page.truncated => after = Some(m),
                _ => break,
            }
        }
        futures::stream::iter(out).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut result = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        let Some(prefix) = self.list_prefix(prefix) else {
            return Ok(result);
        };
        self.device
            .sync_all()
            .await
            .map_err(|e| error(&prefix, e))?;
        let mut after: Option<String> = None;
        loop {
            let page = self.device.list(&prefix, Some("/"), after.as_deref(), PAGE);
            for p in &page.prefixes {
                // `a//b` groups at `a//`: a name with an empty segment, not a directory.
                let name = &p[..p.len() - 1];
                if name.len() > prefix.len()
                    && !name.ends_with('/')
                    && let Some(path) = self.path(name)
                {
                    result.common_prefixes.push(path);
                }
            }
            for o in &page.objects {
                if let Some(path) = self.path(&o.key) {
                    result
                        .objects
                        .push(object_meta(path, o.size, &o.etag, o.modified_unix));
                }
            }
            match page.next_marker {
                Some(m) if page.truncated => after = Some(m),
                _ => break,
            }
        }
        Ok(result)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let src = self.key(from)?;
        let dst = self.key(to)?;
        if options.mode == CopyMode::Create && self.device.head(&dst).is_ok() {
            return Err(object_store::Error::AlreadyExists {
                path: to.to_string(),
                source: "the device already holds this key".into(),
            });
        }
        self.device
            .copy(&src, &dst, None)
            .await
            .map_err(|e| error(&src, e))?;
        Ok(())
    }
}

/// A multipart upload into the device: parts go in as the device's own multipart parts (any
/// order, several at once), completed into one object.
#[derive(Debug)]
struct DeviceUpload {
    device: Device,
    key: String,
    upload_id: String,
    next: u32,
    /// (part number, ETag) of the parts stored so far.
    parts: Arc<Mutex<Vec<(u32, String)>>>,
    finished: bool,
}

#[async_trait]
impl MultipartUpload for DeviceUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.next += 1;
        let number = self.next;
        let device = self.device.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone();
        let parts = self.parts.clone();
        Box::pin(async move {
            let writer = write_payload(&device, data)
                .await
                .map_err(|e| error(&key, e))?;
            let etag = device
                .put_part(&key, &upload_id, number, writer, ExpectedDigests::default())
                .await
                .map_err(|e| error(&key, e))?;
            parts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((number, etag));
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        parts.sort_unstable();
        let put = self
            .device
            .complete_upload(&self.key, &self.upload_id, &parts)
            .await
            .map_err(|e| error(&self.key, e))?;
        self.finished = true;
        Ok(PutResult {
            e_tag: Some(format!("\"{}\"", put.etag)),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.finished = true;
        self.device
            .abort_upload(&self.key, &self.upload_id)
            .await
            .map_err(|e| error(&self.key, e))
    }
}

impl Drop for DeviceUpload {
    /// An upload given up on (a failed part, a dropped writer) is aborted, so its parts do not
    /// stay on the device's disks.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let device = self.device.clone();
            let key = std::mem::take(&mut self.key);
            let upload_id = std::mem::take(&mut self.upload_id);
            rt.spawn(async move {
                if let Err(e) = device.abort_upload(&key, &upload_id).await {
                    tracing::debug!(error = %e, "aborting an abandoned device upload");
                }
            });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path as FsPath;

    use object_store::ObjectStoreExt;

    use super::*;

    pub(crate) async fn store(dir: &FsPath) -> (Device, DeviceObjects) {
        let device = crate::gateway::import::device::tests::device(dir).await;
        (device.clone(), DeviceObjects::new(device, "bkt"))
    }

    #[tokio::test]
    async fn objects_round_trip_with_metadata_ranges_listings_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (device, s) = store(dir.path()).await;
        let mut attrs = Attributes::new();
        attrs.insert(Attribute::Metadata("File-Mode".into()), "0644".into());
        let p = Path::parse("bkt/d/x.txt").unwrap();
        s.put_opts(&p, PutPayload::from_static(b"hello world"), attrs.into())
            .await
            .unwrap();
        // 1:1 with the device's own keys, metadata lower-cased.
        let info = device.head("d/x.txt").unwrap();
        assert_eq!(info.metadata, [("file-mode".to_owned(), "0644".to_owned())]);
        assert_eq!(s.get_range(&p, 6..11).await.unwrap(), &b"world"[..]);
        let head = s
            .get_opts(
                &p,
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(head.meta.size, 11);
        assert!(
            head.attributes
                .get(&Attribute::Metadata("file-mode".into()))
                .is_some()
        );

        // Keys object_store cannot name (S3 directory markers) stay out of listings.
        for k in ["d/y", "d/sub/z", "top", "d/marker/"] {
            s.device
                .put(
                    k,
                    {
                        let mut w = device.writer().unwrap();
                        w.write(Bytes::from_static(b"1")).await.unwrap();
                        w
                    },
                    ObjectAttrs::default(),
                    ExpectedDigests::default(),
                )
                .await
                .unwrap();
        }
        let root = s.list_with_delimiter(None).await.unwrap();
        let names = |v: &[ObjectMeta]| v.iter().map(|m| m.location.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&root.objects), ["bkt/top"]);
        assert_eq!(root.common_prefixes, [Path::parse("bkt/d").unwrap()]);
        let d = s
            .list_with_delimiter(Some(&Path::parse("bkt/d").unwrap()))
            .await
            .unwrap();
        assert_eq!(names(&d.objects), ["bkt/d/x.txt", "bkt/d/y"]);
        let subs: Vec<String> = d.common_prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!(subs, ["bkt/d/marker", "bkt/d/sub"]);
        let all: Vec<ObjectMeta> = s.list(None).try_collect().await.unwrap();
        assert_eq!(all.len(), 4, "{all:?}");

        s.copy(&p, &Path::parse("bkt/copied").unwrap())
            .await
            .unwrap();
        assert_eq!(device.head("copied").unwrap().size, 11);
        s.delete(&p).await.unwrap();
        assert!(matches!(
            s.get(&p).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(matches!(
            s.get(&Path::parse("elsewhere/x").unwrap()).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn multipart_parts_complete_in_order_and_seal_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (device, s) = store(dir.path()).await;
        let p = Path::parse("bkt/big").unwrap();
        let mut up = s.put_multipart_opts(&p, Default::default()).await.unwrap();
        let a = vec![1u8; 5 << 20];
        let b = vec![2u8; 100];
        let fa = up.put_part(PutPayload::from(a.clone()));
        let fb = up.put_part(PutPayload::from(b.clone()));
        // Completed out of order, assembled in part order.
        fb.await.unwrap();
        fa.await.unwrap();
        up.complete().await.unwrap();
        let got = s.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(got.len(), a.len() + b.len());
        assert_eq!(&got[..a.len()], &a[..]);
        assert_eq!(&got[a.len()..], &b[..]);
        assert!(device.head("big").unwrap().etag.ends_with("-2"));

        device.seal().await.unwrap();
        let err = s
            .put(
                &Path::parse("bkt/late").unwrap(),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, object_store::Error::PermissionDenied { .. }),
            "{err}"
        );
    }
}
