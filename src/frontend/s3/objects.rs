//! PUT, GET and HEAD (ranges, parts of multipart objects, conditional requests), DELETE,
//! DeleteObjects and CopyObject.

use s3s::S3Result;
use s3s::dto::*;

use crate::frontend::s3::error::s3_error;
use crate::frontend::s3::wire;
use crate::gateway::import::{Device, ObjectInfo};

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

/// The request headers that make a GET or HEAD conditional (RFC 9110 §13.1).
struct Conditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

impl Conditions<'_> {
    /// Evaluated in RFC 9110 §13.2.2's order: If-Match (else If-Unmodified-Since) fails with
    /// 412; If-None-Match (else If-Modified-Since) answers 304. A date precondition on a
    /// header that does not parse is ignored, as the RFC says.
    fn check(&self, info: &ObjectInfo) -> S3Result<()> {
        let modified = info.modified_unix;
        let failed = match (self.if_match, self.if_unmodified_since) {
            (Some(cond), _) => !matches(cond, &info.etag),
            (None, Some(since)) => wire::unix_secs(since).is_some_and(|since| modified > since),
            (None, None) => false,
        };
        if failed {
            return Err(s3s::s3_error!(
                PreconditionFailed,
                "the object's ETag or modification time does not meet the precondition"
            ));
        }
        let unchanged = match (self.if_none_match, self.if_modified_since) {
            (Some(cond), _) => matches(cond, &info.etag),
            (None, Some(since)) => wire::unix_secs(since).is_some_and(|since| modified <= since),
            (None, None) => false,
        };
        if unchanged {
            return Err(s3s::S3Error::new(s3s::S3ErrorCode::NotModified));
        }
        Ok(())
    }
}

/// The conditions of a GetObjectInput or HeadObjectInput (same fields, different types).
macro_rules! conditions {
    ($input:expr) => {
        Conditions {
            if_match: $input.if_match.as_ref(),
            if_none_match: $input.if_none_match.as_ref(),
            if_modified_since: $input.if_modified_since.as_ref(),
            if_unmodified_since: $input.if_unmodified_since.as_ref(),
        }
    };
}

/// `*` matches any object; an ETag matches by value (S3's ETags are all strong).
fn matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value().trim_matches('"') == etag,
    }
}

/// What a GET or HEAD answers with: the whole object, a `Range`, or one part (`partNumber`).
struct Selection {
    range: Option<std::ops::Range<u64>>,
    parts_count: Option<i32>,
}

fn select(
    info: &ObjectInfo,
    range: Option<s3s::dto::Range>,
    part_number: Option<i32>,
) -> S3Result<Selection> {
    match (range, part_number) {
        (Some(_), Some(_)) => Err(s3s::s3_error!(
            InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter"
        )),
        (Some(r), None) => Ok(Selection {
            range: Some(r.check(info.size)?),
            parts_count: None,
        }),
        (None, Some(n)) => {
            let part = u32::try_from(n).ok().and_then(|n| info.part(n));
            let Some((range, count)) = part else {
                let mut e = s3s::S3Error::with_message(
                    s3s::S3ErrorCode::Custom("InvalidPartNumber".into()),
                    "The requested partnumber is not satisfiable",
                );
                e.set_status_code(hyper::StatusCode::RANGE_NOT_SATISFIABLE);
                return Err(e);
            };
            Ok(Selection {
                range: Some(range),
                // S3 names the count only for objects uploaded in parts.
                parts_count: (!info.parts.is_empty())
                    .then(|| i32::try_from(count).ok())
                    .flatten(),
            })
        }
        (None, None) => Ok(Selection {
            range: None,
            parts_count: None,
        }),
    }
}

fn content_range(range: &std::ops::Range<u64>, size: u64) -> String {
    format!(
        "bytes {}-{}/{size}",
        range.start,
        range.end.saturating_sub(1)
    )
}

pub fn get(device: &Device, input: GetObjectInput) -> S3Result<GetObjectOutput> {
    let info = device.head(&input.key).map_err(s3_error)?;
    conditions!(input).check(&info)?;
    let chosen = select(&info, input.range, input.part_number)?;
    let (info, stream) = device
        .read(&input.key, chosen.range.clone())
        .map_err(s3_error)?;
    let len = chosen.range.as_ref().map_or(info.size, |r| r.end - r.start);
    use futures::StreamExt;
    let body = StreamingBlob::wrap(stream.map(|r| r.map_err(std::io::Error::other)));
    Ok(GetObjectOutput {
        body: Some(body),
        content_range: chosen.range.as_ref().map(|r| content_range(r, info.size)),
        parts_count: chosen.parts_count,
        ..described(&info, len)
    })
}

/// HEAD answers what GET would, without the body.
pub fn head(device: &Device, input: HeadObjectInput) -> S3Result<HeadObjectOutput> {
    let info = device.head(&input.key).map_err(s3_error)?;
    conditions!(input).check(&info)?;
    let chosen = select(&info, input.range, input.part_number)?;
    let len = chosen.range.as_ref().map_or(info.size, |r| r.end - r.start);
    let get = described(&info, len);
    Ok(HeadObjectOutput {
        content_length: get.content_length,
        content_range: chosen.range.as_ref().map(|r| content_range(r, info.size)),
        parts_count: chosen.parts_count,
        accept_ranges: get.accept_ranges,
        content_type: get.content_type,
        e_tag: get.e_tag,
        last_modified: get.last_modified,
        metadata: get.metadata,
        ..Default::default()
    })
}

fn described(info: &ObjectInfo, len: u64) -> GetObjectOutput {
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
