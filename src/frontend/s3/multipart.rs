//! Multipart uploads: create, upload part, complete, abort, list parts, list uploads.

use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result};

use crate::frontend::s3::error::s3_error;
use crate::frontend::s3::wire;
use crate::gateway::GatewayError;
use crate::gateway::import::Device;

/// A missing upload is NoSuchUpload, not NoSuchKey.
pub fn upload_error(e: GatewayError) -> S3Error {
    match e {
        GatewayError::NotFound(m) => S3Error::with_message(S3ErrorCode::NoSuchUpload, m),
        other => s3_error(other),
    }
}

pub async fn create(
    device: &Device,
    input: CreateMultipartUploadInput,
) -> S3Result<CreateMultipartUploadOutput> {
    let attrs = wire::attrs(input.content_type, input.metadata);
    let upload_id = device
        .create_upload(&input.key, attrs)
        .await
        .map_err(s3_error)?;
    Ok(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        ..Default::default()
    })
}

pub async fn upload_part(device: &Device, input: UploadPartInput) -> S3Result<UploadPartOutput> {
    let expected = wire::expected(
        input.content_md5.as_deref(),
        input.checksum_sha256.as_deref(),
    )?;
    let number = u32::try_from(input.part_number)
        .map_err(|_| s3s::s3_error!(InvalidArgument, "part numbers are 1 to 10000"))?;
    let writer = wire::receive(device, input.body).await?;
    let etag = device
        .put_part(&input.key, &input.upload_id, number, writer, expected)
        .await
        .map_err(upload_error)?;
    Ok(UploadPartOutput {
        e_tag: Some(ETag::Strong(etag)),
        checksum_sha256: input.checksum_sha256,
        ..Default::default()
    })
}

pub async fn complete(
    device: &Device,
    input: CompleteMultipartUploadInput,
) -> S3Result<CompleteMultipartUploadOutput> {
    let parts = input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default();
    let mut listed = Vec::with_capacity(parts.len());
    for p in parts {
        let number = p
            .part_number
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| s3s::s3_error!(InvalidPart, "a part has no number"))?;
        let etag = p.e_tag.map(ETag::into_value).unwrap_or_default();
        listed.push((number, etag));
    }
    let done = device
        .complete_upload(&input.key, &input.upload_id, &listed)
        .await
        .map_err(|e| match e {
            // The gateway names S3's own rule in its message; keep S3's code for it.
            GatewayError::InvalidArgument(m) => {
                let code = if m.starts_with("InvalidPartOrder") {
                    S3ErrorCode::InvalidPartOrder
                } else if m.starts_with("InvalidPart") {
                    S3ErrorCode::InvalidPart
                } else if m.starts_with("EntityTooSmall") {
                    S3ErrorCode::EntityTooSmall
                } else {
                    S3ErrorCode::InvalidArgument
                };
                S3Error::with_message(code, m)
            }
            other => upload_error(other),
        })?;
    Ok(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: Some(ETag::Strong(done.etag)),
        ..Default::default()
    })
}

pub async fn list_parts(device: &Device, input: ListPartsInput) -> S3Result<ListPartsOutput> {
    let after = input
        .part_number_marker
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    let max = input
        .max_parts
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(1000)
        .min(1000);
    let all = device
        .list_parts(&input.key, &input.upload_id)
        .await
        .map_err(upload_error)?;
    let rest: Vec<_> = all.into_iter().filter(|p| p.number > after).collect();
    let truncated = rest.len() > max;
    let page: Vec<_> = rest.into_iter().take(max).collect();
    let next = page.last().map(|p| p.number);
    Ok(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        is_truncated: Some(truncated),
        max_parts: i32::try_from(max).ok(),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: next.and_then(|n| i32::try_from(n).ok()),
        parts: Some(
            page.into_iter()
                .map(|p| Part {
                    part_number: i32::try_from(p.number).ok(),
                    size: i64::try_from(p.size).ok(),
                    e_tag: Some(ETag::Strong(p.etag)),
                    last_modified: Some(wire::timestamp(p.modified_unix)),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    })
}

pub async fn list_uploads(
    device: &Device,
    input: ListMultipartUploadsInput,
) -> S3Result<ListMultipartUploadsOutput> {
    let prefix = input.prefix.clone().unwrap_or_default();
    let uploads = device.list_uploads(&prefix).await.map_err(s3_error)?;
    let key_marker = input.key_marker.clone().unwrap_or_default();
    let max = input
        .max_uploads
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(1000)
        .min(1000);
    let rest: Vec<_> = uploads
        .into_iter()
        .filter(|u| key_marker.is_empty() || u.key > key_marker)
        .collect();
    let truncated = rest.len() > max;
    let page: Vec<_> = rest.into_iter().take(max).collect();
    Ok(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: Some(prefix),
        key_marker: input.key_marker,
        is_truncated: Some(truncated),
        max_uploads: i32::try_from(max).ok(),
        next_key_marker: if truncated {
            page.last().map(|u| u.key.clone())
        } else {
            None
        },
        uploads: Some(
            page.into_iter()
                .map(|u| MultipartUpload {
                    key: Some(u.key),
                    upload_id: Some(u.upload_id),
                    initiated: Some(wire::timestamp(u.initiated_unix)),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    })
}
