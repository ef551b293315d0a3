//! `GatewayError` → S3 error code and HTTP status: the S3 front end's one mapping, an
//! exhaustive match with no `_` arm (CONTRIBUTING.md, "Errors"). Integrity failures are 500s, never
//! 404s.

use s3s::{S3Error, S3ErrorCode};

use crate::gateway::GatewayError;
use crate::gateway::import::DigestMismatch;

pub fn s3_error(e: GatewayError) -> S3Error {
    let code = match &e {
        GatewayError::NotFound(_) | GatewayError::Stale(_) => S3ErrorCode::NoSuchKey,
        GatewayError::AlreadyExists(_) | GatewayError::NotEmpty(_) => S3ErrorCode::InvalidRequest,
        // A sealed job's data set is frozen: writes are refused, as on a locked bucket.
        GatewayError::ReadOnly(_) | GatewayError::PermissionDenied(_) => S3ErrorCode::AccessDenied,
        GatewayError::NoSpace(_) | GatewayError::Busy(_) => S3ErrorCode::SlowDown,
        GatewayError::InvalidArgument(_)
        | GatewayError::NotDirectory(_)
        | GatewayError::IsDirectory(_)
        | GatewayError::CrossDevice(_) => S3ErrorCode::InvalidArgument,
        GatewayError::OutOfRange(_) => S3ErrorCode::InvalidRange,
        GatewayError::NameTooLong(_) => S3ErrorCode::KeyTooLongError,
        GatewayError::NotSupported(_) => S3ErrorCode::NotImplemented,
        GatewayError::Corrupt(source) if source.is::<DigestMismatch>() => S3ErrorCode::BadDigest,
        GatewayError::Corrupt(_) | GatewayError::Internal(_) => S3ErrorCode::InternalError,
        GatewayError::Unavailable(_) => S3ErrorCode::ServiceUnavailable,
    };
    if matches!(code, S3ErrorCode::InternalError) {
        tracing::warn!(error = %e, "s3 request failed");
    }
    S3Error::with_message(code, e.to_string())
}
