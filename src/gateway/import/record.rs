//! The sealed records the catalog keeps for a device: objects, multipart uploads and parts.
//!
//! Each is JSON sealed as one frame whose AAD names the job and the row (`device/<job>/object/
//! <name id>`), so a record cannot be moved to another row or job, edited, or read without the
//! job key. Invariant: a record that does not open is reported as tampered, never guessed at.

use serde::{Deserialize, Serialize};

use crate::gateway::GatewayError;
use crate::store::Codec;

/// One segment of object data: a frame file on the device and its plaintext length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    pub len: u64,
}

/// An object on the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    pub key: String,
    pub size: u64,
    /// Hex SHA-256 of the whole object (the manifest's hash).
    pub sha256: String,
    /// The S3 ETag the client was given (MD5 hex, or `<md5 of md5s>-<parts>`), no quotes.
    pub etag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// User metadata, keys lower-cased.
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
    pub modified_unix: i64,
    pub segments: Vec<Segment>,
    /// Part sizes of an object completed from a multipart upload, in order, so a GET with
    /// `partNumber` can return one part (transfer managers download that way). Empty for an
    /// object put whole, and for records written before parts were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
    /// In a device cluster: the device that committed this version. Its function on PUT runs
    /// there (`functions.rs`); never set on a standalone device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_by: Option<String>,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRecord {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
}

/// One uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRecord {
    pub size: u64,
    /// MD5 hex: the part's ETag.
    pub md5: String,
    pub sha256: String,
    pub modified_unix: i64,
    pub segments: Vec<Segment>,
}

/// Checksums a client sent with its data (Content-MD5, x-amz-checksum-sha256), raw bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpectedDigests {
    pub md5: Option<[u8; 16]>,
    pub sha256: Option<[u8; 32]>,
}

pub(crate) fn object_aad(job: &str, name_id: &[u8]) -> String {
    format!("device/{job}/object/{}", crate::store::keys::hex(name_id))
}

pub(crate) fn upload_aad(job: &str, upload_id: &str) -> String {
    format!("device/{job}/upload/{upload_id}")
}

pub(crate) fn part_aad(job: &str, upload_id: &str, number: u32) -> String {
    format!("device/{job}/upload/{upload_id}/part/{number}")
}

pub(crate) fn seal<T: Serialize>(
    codec: &Codec,
    aad: &str,
    value: &T,
) -> Result<Vec<u8>, GatewayError> {
    let json = serde_json::to_vec(value).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    codec
        .seal(aad, &json)
        .map_err(|e| GatewayError::Internal(Box::new(e)))
}

pub(crate) fn open<T: for<'de> Deserialize<'de>>(
    codec: &Codec,
    aad: &str,
    sealed: Vec<u8>,
) -> Result<T, GatewayError> {
    let plain = codec
        .open(aad, sealed)
        .map_err(|e| GatewayError::Corrupt(Box::new(e)))?;
    serde_json::from_slice(&plain).map_err(|e| GatewayError::Corrupt(Box::new(e)))
}
