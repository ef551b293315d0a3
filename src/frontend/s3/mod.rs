//! The bulk-import S3 endpoint (docs/design.md §7): the `s3s::S3` trait over one unlocked device.
//!
//! s3s parses requests and verifies SigV4 (`auth.rs` hands it the device's own key pair); each
//! operation family has a file (`objects`, `list`, `multipart`) that turns the typed input into
//! `gateway::import::Device` calls, and `error.rs` maps every `GatewayError`. The device exposes
//! exactly one bucket, the job's target bucket. Must not: import another front end, `store` or
//! `catalog`. Invariant: a PUT is answered 200 only after the device committed the object
//! (segments fsynced, record in the catalog) and the client's checksums matched.

mod auth;
mod error;
mod list;
mod multipart;
mod objects;
mod tls;
mod wire;

pub use tls::{EndpointTls, TlsError};

use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use s3s::dto::*;
use s3s::service::S3Service;
use s3s::{S3, S3Request, S3Response, S3Result};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::gateway::import::Device;

/// Serves the S3 endpoint for `device` on `listener` until `shutdown` resolves: HTTPS when
/// `tls` is given, plain HTTP otherwise. Each connection (and its TLS handshake) runs in its own
/// task, so a client that fails or stalls its handshake disturbs no other. Connections in
/// progress are dropped at shutdown (the device is being locked).
pub async fn serve(
    device: Device,
    listener: TcpListener,
    tls: Option<EndpointTls>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (access, secret) = device.credentials();
    let mut builder = s3s::service::S3ServiceBuilder::new(DeviceS3 { device });
    builder.set_auth(auth::DeviceAuth::new(access, secret));
    let service = builder.build();
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "s3: accept failed");
                continue;
            }
        };
        let service = service.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        conns.spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, service, peer).await;
            };
            match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, service, peer).await,
                Ok(Err(e)) => tracing::warn!(%peer, error = %e, "s3: tls handshake failed"),
                Err(_) => tracing::warn!(%peer, "s3: tls handshake timed out"),
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

async fn serve_connection<S>(stream: S, service: S3Service, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "s3 connection ended");
    }
}

struct DeviceS3 {
    device: Device,
}

impl DeviceS3 {
    /// Requests name the device's one bucket; anything else does not exist here.
    fn bucket(&self, name: &str) -> S3Result<()> {
        if name == self.device.bucket_name() {
            Ok(())
        } else {
            Err(s3s::s3_error!(
                NoSuchBucket,
                "this device holds only the bucket {}",
                self.device.bucket_name()
            ))
        }
    }
}

#[async_trait::async_trait]
impl S3 for DeviceS3 {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        Ok(S3Response::new(list::buckets(&self.device)))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.bucket(&req.input.bucket)?;
        self.device.sync_all().await.map_err(error::s3_error)?;
        Ok(S3Response::new(list::objects_v1(&self.device, req.input)))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.bucket(&req.input.bucket)?;
        self.device.sync_all().await.map_err(error::s3_error)?;
        Ok(S3Response::new(list::objects_v2(&self.device, req.input)?))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            objects::put(&self.device, req.input).await?,
        ))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        self.device
            .sync_key(&req.input.key)
            .await
            .map_err(error::s3_error)?;
        Ok(S3Response::new(objects::get(&self.device, req.input)?))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        self.device
            .sync_key(&req.input.key)
            .await
            .map_err(error::s3_error)?;
        Ok(S3Response::new(objects::head(&self.device, req.input)?))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        self.device
            .delete(&req.input.key)
            .await
            .map_err(error::s3_error)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            objects::delete_many(&self.device, req.input).await,
        ))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
            self.bucket(bucket)?;
            self.device.sync_key(key).await.map_err(error::s3_error)?;
        }
        Ok(S3Response::new(
            objects::copy(&self.device, req.input).await?,
        ))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            multipart::create(&self.device, req.input).await?,
        ))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            multipart::upload_part(&self.device, req.input).await?,
        ))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            multipart::complete(&self.device, req.input).await?,
        ))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.bucket(&req.input.bucket)?;
        self.device
            .abort_upload(&req.input.key, &req.input.upload_id)
            .await
            .map_err(multipart::upload_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            multipart::list_parts(&self.device, req.input).await?,
        ))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(
            multipart::list_uploads(&self.device, req.input).await?,
        ))
    }
}
