//! Small conversions between S3's wire forms and the gateway's: base64 checksums, times,
//! metadata maps, request bodies.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use s3s::S3Result;
use s3s::dto::{StreamingBlob, Timestamp, TimestampFormat};

use crate::gateway::import::{Device, ExpectedDigests, ObjectAttrs, SegmentWriter};

pub fn timestamp(unix: i64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0)))
}

/// Whole seconds since the epoch of a request's date header (HTTP dates have whole seconds).
pub fn unix_secs(t: &Timestamp) -> Option<i64> {
    let mut text = Vec::new();
    t.format(TimestampFormat::EpochSeconds, &mut text).ok()?;
    let secs: f64 = std::str::from_utf8(&text).ok()?.parse().ok()?;
    // In range of i64 by construction: a Timestamp is a calendar date.
    Some(secs.floor() as i64)
}

/// Standard base64 (RFC 4648 §4) with padding, as Content-MD5 and x-amz-checksum-* use.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The client's Content-MD5 and x-amz-checksum-sha256, decoded; a malformed one is
/// InvalidDigest (RFC 1864 says what Content-MD5 holds).
pub fn expected(md5: Option<&str>, sha256: Option<&str>) -> S3Result<ExpectedDigests> {
    let md5 = match md5 {
        Some(s) => Some(
            base64_decode(s)
                .and_then(|v| <[u8; 16]>::try_from(v).ok())
                .ok_or_else(|| s3s::s3_error!(InvalidDigest, "Content-MD5 is not a base64 MD5"))?,
        ),
        None => None,
    };
    let sha256 = match sha256 {
        Some(s) => Some(
            base64_decode(s)
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| {
                    s3s::s3_error!(
                        InvalidDigest,
                        "x-amz-checksum-sha256 is not a base64 SHA-256"
                    )
                })?,
        ),
        None => None,
    };
    Ok(ExpectedDigests { md5, sha256 })
}

pub fn attrs(
    content_type: Option<String>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> ObjectAttrs {
    let mut metadata: Vec<(String, String)> = metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    metadata.sort();
    ObjectAttrs {
        content_type,
        metadata,
    }
}

pub fn metadata_map(m: &[(String, String)]) -> Option<std::collections::HashMap<String, String>> {
    (!m.is_empty()).then(|| m.iter().cloned().collect())
}

/// Streams a request body into a new segment writer.
pub async fn receive(device: &Device, body: Option<StreamingBlob>) -> S3Result<SegmentWriter> {
    let mut writer = device.writer().map_err(super::error::s3_error)?;
    if let Some(mut body) = body {
        while let Some(piece) = body.next().await {
            let piece = piece
                .map_err(|e| s3s::s3_error!(IncompleteBody, "reading the request body: {e}"))?;
            writer.write(piece).await.map_err(super::error::s3_error)?;
        }
    }
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let enc = base64_encode(data);
            assert_eq!(base64_decode(&enc).as_deref(), Some(data), "{enc}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm9", "Zm9v!mFy", "Z==="] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }
}
