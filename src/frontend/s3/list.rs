//! ListBuckets and ListObjects V1/V2 (prefix, delimiter, marker / continuation token, max-keys).
//! The V2 continuation token is the last key or prefix returned, base64-encoded, so it is
//! opaque to clients and needs no server state.

use s3s::S3Result;
use s3s::dto::*;

use crate::frontend::s3::wire;
use crate::gateway::import::{Device, Listing};

/// S3's default and largest page.
const MAX_KEYS: usize = 1000;

pub fn buckets(device: &Device) -> ListBucketsOutput {
    ListBucketsOutput {
        buckets: Some(vec![Bucket {
            name: Some(device.bucket_name().to_owned()),
            creation_date: Some(wire::timestamp(0)),
            ..Default::default()
        }]),
        owner: Some(Owner {
            display_name: Some("tidegate".into()),
            id: Some("tidegate".into()),
        }),
        ..Default::default()
    }
}

fn page_size(max: Option<i32>) -> usize {
    max.and_then(|m| usize::try_from(m).ok())
        .unwrap_or(MAX_KEYS)
        .min(MAX_KEYS)
}

fn contents(listing: &Listing) -> Vec<Object> {
    listing
        .objects
        .iter()
        .map(|o| Object {
            key: Some(o.key.clone()),
            size: i64::try_from(o.size).ok(),
            e_tag: Some(ETag::Strong(o.etag.clone())),
            last_modified: Some(wire::timestamp(o.modified_unix)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn prefixes(listing: &Listing) -> Vec<CommonPrefix> {
    listing
        .prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(p.clone()),
        })
        .collect()
}

pub fn objects_v1(device: &Device, input: ListObjectsInput) -> ListObjectsOutput {
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = page_size(input.max_keys);
    let listing = device.list(
        &prefix,
        input.delimiter.as_deref(),
        input.marker.as_deref().filter(|m| !m.is_empty()),
        max,
    );
    ListObjectsOutput {
        name: Some(input.bucket),
        prefix: Some(prefix),
        marker: input.marker,
        max_keys: i32::try_from(max).ok(),
        is_truncated: Some(listing.truncated),
        contents: Some(contents(&listing)),
        common_prefixes: Some(prefixes(&listing)),
        // S3 returns NextMarker only with a delimiter; clients without one use the last key.
        next_marker: if input.delimiter.is_some() {
            listing.next_marker.clone()
        } else {
            None
        },
        delimiter: input.delimiter,
        encoding_type: input.encoding_type,
        ..Default::default()
    }
}

pub fn objects_v2(device: &Device, input: ListObjectsV2Input) -> S3Result<ListObjectsV2Output> {
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = page_size(input.max_keys);
    let token = match input.continuation_token.as_deref() {
        Some(t) => Some(
            wire::base64_decode(t)
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| {
                    s3s::s3_error!(InvalidArgument, "the continuation token is invalid")
                })?,
        ),
        None => None,
    };
    let after = token.as_deref().or(input.start_after.as_deref());
    let listing = device.list(&prefix, input.delimiter.as_deref(), after, max);
    let objects = contents(&listing);
    let common = prefixes(&listing);
    Ok(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: Some(prefix),
        max_keys: i32::try_from(max).ok(),
        key_count: i32::try_from(objects.len() + common.len()).ok(),
        continuation_token: input.continuation_token,
        is_truncated: Some(listing.truncated),
        next_continuation_token: listing
            .next_marker
            .as_ref()
            .map(|m| wire::base64_encode(m.as_bytes())),
        contents: Some(objects),
        common_prefixes: Some(common),
        delimiter: input.delimiter,
        encoding_type: input.encoding_type,
        start_after: input.start_after,
        ..Default::default()
    })
}
