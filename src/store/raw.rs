//! The few S3 requests object_store cannot express, signed here with AWS Signature V4: keys
//! ending in `/` (directory markers; object_store paths never end in a delimiter) and
//! CopyObject with `x-amz-metadata-directive: REPLACE` (changing an object's metadata without
//! re-uploading it: object_store's copy keeps the old metadata and cannot replace it).
//!
//! Also the multipart requests whose upload id must outlive the process (an import resumed
//! after a crash continues its upload: ListParts, parts sent with Content-MD5).
//!
//! Only for `s3://` buckets with static or environment credentials; everything else goes
//! through object_store. Invariant: a request is signed over exactly the headers sent, and a
//! body is covered by the signature's payload hash or, for parts, by its Content-MD5.

use aws_lc_rs::{digest, hmac};

use crate::config::{BucketConfig, BucketLocation, Credentials};
use crate::percent::encode as uri_encode;
use crate::store::StoreError;
use crate::store::keys::hex;

/// SHA-256 of the empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One request, as `RawS3::dispatch` signs and sends it (again, if it must retry).
struct Req<'a> {
    method: reqwest::Method,
    op: &'static str,
    key: &'a str,
    query: &'a [(&'a str, String)],
    extra: &'a [(String, String)],
    body: bytes::Bytes,
    payload: Payload,
}

/// Attempts per request (the first and the retries).
const RETRIES: u32 = 5;

/// How one attempt failed.
enum Failure {
    Retryable(StoreError),
    Final(StoreError),
}

/// Whether a request's body is covered by its signature (SHA-256 of the body) or not
/// (`UNSIGNED-PAYLOAD`, for bodies another checksum protects).
#[derive(Debug, Clone, Copy)]
enum Payload {
    Signed,
    Unsigned,
}

#[derive(Debug)]
pub(crate) struct RawS3 {
    client: reqwest::Client,
    /// `scheme://host[:port]`, no trailing slash.
    endpoint: String,
    host: String,
    bucket: String,
    /// The bucket URL's prefix with a trailing `/`, or empty.
    prefix: String,
    region: String,
    path_style: bool,
    credentials: Credentials,
    describe: String,
}

/// A Unix time as RFC 3339 UTC (`2023-11-14T22:13:20Z`), by the days-to-civil algorithm (H.
/// Hinnant's) so no date crate is needed. Used for S3 request dates and by `status`.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// SigV4's `YYYYMMDDTHHMMSSZ`.
fn amz_date(unix: i64) -> String {
    rfc3339(unix).replace(['-', ':'], "")
}

/// What a signed request brought back.
struct Reply {
    etag: Option<String>,
    /// Content-Length and x-amz-mp-parts-count, for a HEAD of one part.
    length: Option<u64>,
    parts: Option<u32>,
    body: String,
}

fn meta_headers(metadata: &[(String, String)]) -> Vec<(String, String)> {
    metadata
        .iter()
        .map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone()))
        .collect()
}

/// The text of the first `<tag>` element of an S3 XML reply, entities decoded.
fn xml_value(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{tag}>"))?;
    Some(
        body[start..start + len]
            .replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .replace("&amp;", "&"),
    )
}

/// Whether the target answered that it has no such multipart upload (completed, aborted or
/// expired).
fn no_such_upload(e: &StoreError) -> bool {
    matches!(e, StoreError::Other { detail, .. }
        if detail.contains("NoSuchUpload") || detail.starts_with("HTTP 404"))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

impl RawS3 {
    /// `None` for a `file://` bucket, which needs none of this.
    pub(crate) fn new(cfg: &BucketConfig) -> Option<Self> {
        let BucketLocation::S3 { bucket, prefix } = &cfg.location else {
            return None;
        };
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", cfg.region))
            .trim_end_matches('/')
            .to_owned();
        let authority = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest)
            .to_owned();
        let host = if cfg.path_style {
            authority
        } else {
            format!("{bucket}.{authority}")
        };
        Some(Self {
            client: reqwest::Client::new(),
            endpoint,
            host,
            bucket: bucket.clone(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            region: cfg.region.clone(),
            path_style: cfg.path_style,
            credentials: cfg.credentials.clone(),
            describe: cfg.location.to_string(),
        })
    }

    fn keys(&self) -> Option<(String, String, Option<String>)> {
        match &self.credentials {
            Credentials::Static {
                access_key_id,
                secret_access_key,
            } => Some((access_key_id.clone(), secret_access_key.clone(), None)),
            Credentials::Environment => Some((
                std::env::var("AWS_ACCESS_KEY_ID").ok()?,
                std::env::var("AWS_SECRET_ACCESS_KEY").ok()?,
                std::env::var("AWS_SESSION_TOKEN").ok(),
            )),
        }
    }

    /// The canonical URI of an object key (the bucket prefix applied).
    fn path(&self, key: &str) -> String {
        let full = uri_encode(&format!("{}{key}", self.prefix), true);
        if self.path_style {
            format!("/{}/{full}", uri_encode(&self.bucket, false))
        } else {
            format!("/{full}")
        }
    }

    /// Sends one signed request; `query` and `extra` headers are signed too. Returns the
    /// response's ETag header and body.
    async fn request(
        &self,
        method: reqwest::Method,
        op: &'static str,
        key: &str,
        query: &[(&str, String)],
        extra: &[(String, String)],
        body: bytes::Bytes,
    ) -> Result<Reply, StoreError> {
        self.dispatch(Req {
            method,
            op,
            key,
            query,
            extra,
            body,
            payload: Payload::Signed,
        })
        .await
    }

    /// Sends the request, retrying what may pass by itself (no connection, HTTP 5xx, 429) a
    /// few times with backoff, as object_store does for the requests it sends.
    async fn dispatch(&self, req: Req<'_>) -> Result<Reply, StoreError> {
        let mut wait = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.attempt(&req).await {
                Err(Failure::Retryable(e)) if attempt < RETRIES => {
                    tracing::debug!(op = req.op, key = req.key, error = %e, attempt, "retrying a request");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(Failure::Retryable(e) | Failure::Final(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
    }

    /// One signed request.
    async fn attempt(&self, req: &Req<'_>) -> Result<Reply, Failure> {
        let (method, op, key, query, extra, body) = (
            &req.method,
            req.op,
            req.key,
            req.query,
            req.extra,
            &req.body,
        );
        let payload = req.payload;
        let other = |detail: String| StoreError::Other {
            bucket: self.describe.clone(),
            op,
            key: key.to_owned(),
            detail,
        };
        let (access, secret, token) = self.keys().ok_or_else(|| {
            Failure::Final(other(
                "no static or environment credentials for a signed request".into(),
            ))
        })?;
        let now = crate::clock::unix_secs();
        let date = amz_date(now);
        let day = &date[..8];
        let path = self.path(key);
        let payload_hash = match payload {
            Payload::Unsigned => "UNSIGNED-PAYLOAD".to_owned(),
            Payload::Signed if body.is_empty() => EMPTY_SHA256.to_owned(),
            Payload::Signed => hex(digest::digest(&digest::SHA256, body).as_ref()),
        };
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), self.host.clone()),
            ("x-amz-content-sha256".into(), payload_hash.clone()),
            ("x-amz-date".into(), date.clone()),
        ];
        if let Some(t) = token {
            headers.push(("x-amz-security-token".into(), t));
        }
        headers.extend(
            extra
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())),
        );
        headers.sort();
        let mut params: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        params.sort();
        let query_string = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let canonical = format!(
            "{method}\n{path}\n{query_string}\n{canonical_headers}\n{signed}\n{payload_hash}",
            method = method.as_str()
        );
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let mut k = hmac_sha256(format!("AWS4{secret}").as_bytes(), day.as_bytes());
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            k = hmac_sha256(&k, part.as_bytes());
        }
        let signature = hex(&hmac_sha256(&k, to_sign.as_bytes()));
        let base = if self.path_style {
            format!("{}{path}", self.endpoint)
        } else {
            let (scheme, _) = self.endpoint.split_once("://").unwrap_or(("https", ""));
            format!("{scheme}://{}{path}", self.host)
        };
        let url = if query_string.is_empty() {
            base
        } else {
            format!("{base}?{query_string}")
        };
        let mut request = self.client.request(method.clone(), url).header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, \
                 Signature={signature}"
            ),
        );
        for (k, v) in &headers {
            if k != "host" {
                request = request.header(k.as_str(), v.as_str());
            }
        }
        let resp = request.body(body.clone()).send().await.map_err(|e| {
            Failure::Retryable(StoreError::Unreachable {
                bucket: self.describe.clone(),
                endpoint: self.endpoint.clone(),
                detail: e.to_string(),
            })
        })?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let number = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let length = number("content-length");
        let parts = number("x-amz-mp-parts-count").and_then(|n| u32::try_from(n).ok());
        let text = resp.text().await.unwrap_or_default();
        // CompleteMultipartUpload and UploadPartCopy can fail with a 200 and an error body.
        if status.is_success() && !text.contains("<Error>") {
            return Ok(Reply {
                etag,
                length,
                parts,
                body: text,
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND && op == "delete" {
            return Ok(Reply {
                etag,
                length,
                parts,
                body: text,
            });
        }
        let retryable = status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || (status.is_success()
                && ["InternalError", "SlowDown", "ServiceUnavailable"]
                    .iter()
                    .any(|c| text.contains(&format!("<Code>{c}</Code>"))));
        let text: String = text.chars().take(300).collect();
        let e = other(format!(
            "HTTP {status}: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        Err(if retryable {
            Failure::Retryable(e)
        } else {
            Failure::Final(e)
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        op: &'static str,
        key: &str,
        extra: &[(String, String)],
    ) -> Result<(), StoreError> {
        self.request(method, op, key, &[], extra, bytes::Bytes::new())
            .await
            .map(|_| ())
    }

    /// Starts a multipart upload of `key` with user metadata (and a content type); returns its
    /// upload id.
    pub(crate) async fn create_multipart(
        &self,
        key: &str,
        metadata: &[(String, String)],
        content_type: Option<&str>,
    ) -> Result<String, StoreError> {
        self.create_multipart_with(key, metadata, content_type, false)
            .await
    }

    /// Starts a multipart upload whose parts each carry a CRC32C the target checks
    /// ([`Self::upload_part_crc32c`]).
    pub(crate) async fn create_multipart_crc32c(
        &self,
        key: &str,
        metadata: &[(String, String)],
    ) -> Result<String, StoreError> {
        self.create_multipart_with(key, metadata, None, true).await
    }

    async fn create_multipart_with(
        &self,
        key: &str,
        metadata: &[(String, String)],
        content_type: Option<&str>,
        crc32c: bool,
    ) -> Result<String, StoreError> {
        let mut headers = meta_headers(metadata);
        if let Some(ct) = content_type {
            headers.push(("content-type".into(), ct.to_owned()));
        }
        if crc32c {
            headers.push(("x-amz-checksum-algorithm".into(), "CRC32C".into()));
        }
        let reply = self
            .request(
                reqwest::Method::POST,
                "start multipart upload of",
                key,
                &[("uploads", String::new())],
                &headers,
                bytes::Bytes::new(),
            )
            .await?;
        xml_value(&reply.body, "UploadId").ok_or_else(|| StoreError::Other {
            bucket: self.describe.clone(),
            op: "start multipart upload of",
            key: key.to_owned(),
            detail: "no UploadId in the reply".into(),
        })
    }

    /// Uploads part `number` of an upload started by [`Self::create_multipart_crc32c`] with
    /// its CRC32C in `x-amz-checksum-crc32c` and an unsigned payload: the target refuses a
    /// damaged part, and neither side spends a SHA-256 over the body (the costliest step of a
    /// signed part, for the sender and the target alike). Returns the ETag and the checksum
    /// (base64), which the completion repeats.
    pub(crate) async fn upload_part_crc32c(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: bytes::Bytes,
    ) -> Result<(String, String), StoreError> {
        use base64::Engine as _;
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &data);
        let crc = u32::try_from(crc).unwrap_or(0).to_be_bytes();
        let crc = base64::engine::general_purpose::STANDARD.encode(crc);
        let headers = [("x-amz-checksum-crc32c".to_owned(), crc.clone())];
        let etag = self
            .put_part(key, upload_id, number, data, &headers, Payload::Unsigned)
            .await?;
        Ok((etag, crc))
    }

    /// Uploads part `number`; returns its ETag. With `md5`, the part carries it in
    /// `Content-MD5` with an unsigned payload: the target checks the bytes against the MD5 (a
    /// damaged part is refused), so the SHA-256 a signed payload needs, the costliest step of
    /// sending a part, is skipped.
    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: bytes::Bytes,
        md5: Option<&[u8; 16]>,
    ) -> Result<String, StoreError> {
        use base64::Engine as _;
        let headers: Vec<(String, String)> = md5
            .map(|m| {
                (
                    "content-md5".to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(m),
                )
            })
            .into_iter()
            .collect();
        let payload = if md5.is_some() {
            Payload::Unsigned
        } else {
            Payload::Signed
        };
        self.put_part(key, upload_id, number, data, &headers, payload)
            .await
    }

    /// One UploadPart request; returns the part's ETag.
    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: bytes::Bytes,
        headers: &[(String, String)],
        payload: Payload,
    ) -> Result<String, StoreError> {
        let query = [
            ("partNumber", number.to_string()),
            ("uploadId", upload_id.to_owned()),
        ];
        let reply = self
            .dispatch(Req {
                method: reqwest::Method::PUT,
                op: "upload part of",
                key,
                query: &query,
                extra: headers,
                body: data,
                payload,
            })
            .await?;
        reply.etag.ok_or_else(|| StoreError::Other {
            bucket: self.describe.clone(),
            op: "upload part of",
            key: key.to_owned(),
            detail: "no ETag in the reply".into(),
        })
    }

    /// The parts of an unfinished multipart upload as `(number, size, ETag)`, every page; `None`
    /// when the target no longer has the upload (completed, aborted or expired).
    pub(crate) async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Vec<(u32, u64, String)>>, StoreError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut query = vec![("uploadId", upload_id.to_owned())];
            if let Some(m) = &marker {
                query.push(("part-number-marker", m.clone()));
            }
            let reply = match self
                .request(
                    reqwest::Method::GET,
                    "list parts of",
                    key,
                    &query,
                    &[],
                    bytes::Bytes::new(),
                )
                .await
            {
                Ok(r) => r,
                Err(e) if no_such_upload(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            for part in reply.body.split("<Part>").skip(1) {
                let number = xml_value(part, "PartNumber").and_then(|v| v.trim().parse().ok());
                let size = xml_value(part, "Size").and_then(|v| v.trim().parse().ok());
                let etag = xml_value(part, "ETag").map(|e| e.trim_matches('"').to_owned());
                if let (Some(n), Some(sz), Some(e)) = (number, size, etag) {
                    parts.push((n, sz, e));
                }
            }
            marker = xml_value(&reply.body, "NextPartNumberMarker");
            let truncated = xml_value(&reply.body, "IsTruncated").as_deref() == Some("true");
            if !truncated || marker.is_none() {
                break;
            }
        }
        Ok(Some(parts))
    }

    /// Makes part `number` a server-side copy of `source`'s bytes `range` (inclusive end, as
    /// the header wants); returns the part's ETag.
    pub(crate) async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        source: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<String, StoreError> {
        let query = [
            ("partNumber", number.to_string()),
            ("uploadId", upload_id.to_owned()),
        ];
        let headers = [
            ("x-amz-copy-source".to_owned(), self.copy_source(source)),
            (
                "x-amz-copy-source-range".to_owned(),
                format!("bytes={}-{}", range.start(), range.end()),
            ),
        ];
        let reply = self
            .request(
                reqwest::Method::PUT,
                "copy part of",
                key,
                &query,
                &headers,
                bytes::Bytes::new(),
            )
            .await?;
        xml_value(&reply.body, "ETag").ok_or_else(|| StoreError::Other {
            bucket: self.describe.clone(),
            op: "copy part of",
            key: key.to_owned(),
            detail: "no ETag in the reply".into(),
        })
    }

    /// Completes a multipart upload from its parts' ETags, in order; returns the object's ETag.
    pub(crate) async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<Option<String>, StoreError> {
        let parts: Vec<(&str, Option<&str>)> = etags.iter().map(|e| (e.as_str(), None)).collect();
        self.complete_multipart_with(key, upload_id, &parts).await
    }

    /// Completes an upload from its parts in order: (ETag, CRC32C for an upload started with
    /// [`Self::create_multipart_crc32c`]).
    pub(crate) async fn complete_multipart_with(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(&str, Option<&str>)],
    ) -> Result<Option<String>, StoreError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, (etag, crc)) in parts.iter().enumerate() {
            let etag = etag.replace('&', "&amp;").replace('"', "&quot;");
            let crc = crc
                .map(|c| format!("<ChecksumCRC32C>{c}</ChecksumCRC32C>"))
                .unwrap_or_default();
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag>{crc}</Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let reply = self
            .request(
                reqwest::Method::POST,
                "complete multipart upload of",
                key,
                &[("uploadId", upload_id.to_owned())],
                &[],
                bytes::Bytes::from(xml),
            )
            .await?;
        Ok(xml_value(&reply.body, "ETag").or(reply.etag))
    }

    /// Abandons a multipart upload so its parts do not linger. One the target no longer has
    /// (completed, aborted or expired) is as good as aborted.
    pub(crate) async fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StoreError> {
        match self
            .request(
                reqwest::Method::DELETE,
                "abort multipart upload of",
                key,
                &[("uploadId", upload_id.to_owned())],
                &[],
                bytes::Bytes::new(),
            )
            .await
        {
            Err(e) if no_such_upload(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    fn copy_source(&self, from: &str) -> String {
        format!(
            "/{}/{}",
            uri_encode(&self.bucket, false),
            uri_encode(&format!("{}{from}", self.prefix), true)
        )
    }

    /// PUTs an empty object at `key` (which may end in `/`) with user metadata.
    pub(crate) async fn put_empty(
        &self,
        key: &str,
        metadata: &[(String, String)],
    ) -> Result<(), StoreError> {
        self.send(reqwest::Method::PUT, "put", key, &meta_headers(metadata))
            .await
    }

    /// Server-side copy of `from` to `to` with `metadata` replacing the source's.
    pub(crate) async fn copy_replacing_metadata(
        &self,
        from: &str,
        to: &str,
        metadata: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut headers = vec![
            ("x-amz-copy-source".to_owned(), self.copy_source(from)),
            ("x-amz-metadata-directive".to_owned(), "REPLACE".to_owned()),
        ];
        headers.extend(meta_headers(metadata));
        self.send(reqwest::Method::PUT, "copy", to, &headers).await
    }

    /// HEAD of one part of a multipart object (`?partNumber=`, S3 HeadObject): the part's
    /// length and the object's part count, or `None` when the server ignores the parameter
    /// (no parts count in the reply).
    pub(crate) async fn head_part(
        &self,
        key: &str,
        part: u32,
    ) -> Result<Option<(u64, u32)>, StoreError> {
        let reply = self
            .request(
                reqwest::Method::HEAD,
                "head part of",
                key,
                &[("partNumber", part.to_string())],
                &[],
                bytes::Bytes::new(),
            )
            .await?;
        Ok(reply.length.zip(reply.parts))
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.send(reqwest::Method::DELETE, "delete", key, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_700_000_000), "20231114T221320Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn the_aws_example_signing_key_is_derived() {
        // AWS's published SigV4 example: secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
        // 20120215, us-east-1, iam.
        let mut k = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            k = hmac_sha256(&k, part.as_bytes());
        }
        assert_eq!(
            hex(&k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
