//! PUT, GET (ranges), HEAD, DELETE, DeleteObjects and CopyObject.

use s3s::S3Result;
use s3s::dto::*;

use crate::frontend::s3::error::s3_error;
use crate::frontend::s3::wire;
use crate::gateway::import::Device;

fn etag(e: &str) -> ETag {
    ETag::Strong(e.to_owned())
}

pub async fn put(device: &Device, input: PutObjectInput) -> S3Result<PutObjectOutput> {
    let expected = wire::expected(
        input.content_md5.as_deref(),
        input.checksum_sha256.as_deref(),
    )?;
    let attrs = wire::attrs(input.content_type, input.metadata);
    let writer = wire::receive(device, input.body).await?;
    let done = device
        .put(&input.key, writer, attrs, expected)
        .await
        .map_err(s3_error)?;
    Ok(PutObjectOutput {
        e_tag: Some(etag(&done.etag)),
        checksum_sha256: input.checksum_sha256,
        size: i64::try_from(done.size).ok(),
        ..Default::default()
    })
}

pub fn get(device: &Device, input: GetObjectInput) -> S3Result<GetObjectOutput> {
    let info = device.head(&input.key).map_err(s3_error)?;
    let range = match input.range {
        Some(r) => Some(r.check(info.size)?),
        None => None,
    };
    let (info, stream) = device.read(&input.key, range.clone()).map_err(s3_error)?;
    let len = range.as_ref().map_or(info.size, |r| r.end - r.start);
    let content_range = range.as_ref().map(|r| {
        format!(
            "bytes {}-{}/{}",
            r.start,
            r.end.saturating_sub(1),
            info.size
        )
    });
    use futures::StreamExt;
    let body = StreamingBlob::wrap(stream.map(|r| r.map_err(std::io::Error::other)));
    Ok(GetObjectOutput {
        body: Some(body),
        content_range,
        ..described(&info, len)
    })
}

/// HEAD answers what GET would, without the body.
pub fn head(device: &Device, input: HeadObjectInput) -> S3Result<HeadObjectOutput> {
    let info = device.head(&input.key).map_err(s3_error)?;
    let get = described(&info, info.size);
    Ok(HeadObjectOutput {
        content_length: get.content_length,
        accept_ranges: get.accept_ranges,
        content_type: get.content_type,
        e_tag: get.e_tag,
        last_modified: get.last_modified,
        metadata: get.metadata,
        ..Default::default()
    })
}

fn described(info: &crate::gateway::import::ObjectInfo, len: u64) -> GetObjectOutput {
    GetObjectOutput {
        content_length: i64::try_from(len).ok(),
        accept_ranges: Some("bytes".into()),
        content_type: info.content_type.clone(),
        e_tag: Some(etag(&info.etag)),
        last_modified: Some(wire::timestamp(info.modified_unix)),
        metadata: wire::metadata_map(&info.metadata),
        ..Default::default()
    }
}

pub async fn delete_many(device: &Device, input: DeleteObjectsInput) -> DeleteObjectsOutput {
    let quiet = input.delete.quiet.unwrap_or(false);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for obj in input.delete.objects {
        match device.delete(&obj.key).await {
            Ok(()) => {
                if !quiet {
                    deleted.push(DeletedObject {
                        key: Some(obj.key),
                        ..Default::default()
                    });
                }
            }
            Err(e) => {
                let err = s3_error(e);
                errors.push(Error {
                    code: Some(err.code().as_str().to_owned()),
                    key: Some(obj.key),
                    message: err.message().map(str::to_owned),
                    ..Default::default()
                });
            }
        }
    }
    DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: (!errors.is_empty()).then_some(errors),
        ..Default::default()
    }
}

pub async fn copy(device: &Device, input: CopyObjectInput) -> S3Result<CopyObjectOutput> {
    let CopySource::Bucket { key: src, .. } = &input.copy_source else {
        return Err(s3s::s3_error!(
            NotImplemented,
            "access-point copy sources are not supported"
        ));
    };
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    let attrs = replace.then(|| wire::attrs(input.content_type, input.metadata));
    let done = device
        .copy(src, &input.key, attrs)
        .await
        .map_err(s3_error)?;
    let info = device.head(&input.key).map_err(s3_error)?;
    Ok(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(etag(&done.etag)),
            last_modified: Some(wire::timestamp(info.modified_unix)),
            ..Default::default()
        }),
        ..Default::default()
    })
}
