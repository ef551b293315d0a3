//! `GatewayError`: the protocol-neutral failure kinds. Each front end maps every kind in one
//! exhaustive match (CONTRIBUTING.md, "Errors"), so adding a kind breaks the build until each
//! decides. The lower error is kept as the source.

use crate::catalog::CatalogError;
use crate::store::StoreError;

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not empty: {0}")]
    NotEmpty(String),
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// Cache or upload buffer full.
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// A GCM tag or checksum failed: never retried into a wrong answer.
    #[error(transparent)]
    Corrupt(Source),
    /// The bucket cannot be reached; the operation may succeed later.
    #[error(transparent)]
    Unavailable(Source),
    #[error("busy: {0}")]
    Busy(String),
    /// A path component that must be a directory is not one.
    #[error("not a directory: {0}")]
    NotDirectory(String),
    /// A file operation named a directory.
    #[error("is a directory: {0}")]
    IsDirectory(String),
    /// The caller's credentials do not allow it (after squash).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A name or key longer than the gateway allows (255-byte names, 1024-byte keys).
    #[error("name too long: {0}")]
    NameTooLong(String),
    /// The operation would join two file systems (a hard link or rename across shares).
    #[error("cross-device: {0}")]
    CrossDevice(String),
    /// The operation is not offered.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// A file id that named something that no longer exists.
    #[error("stale file id: {0}")]
    Stale(String),
    #[error(transparent)]
    Internal(Source),
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(_) | StoreError::WrongKey { .. } => Self::Corrupt(Box::new(e)),
            StoreError::NotFound { .. } | StoreError::Conflict { .. } => {
                Self::Internal(Box::new(e))
            }
            StoreError::Unreachable { .. } | StoreError::Other { .. } => {
                Self::Unavailable(Box::new(e))
            }
            StoreError::NoSuchBucket { .. }
            | StoreError::AccessDenied { .. }
            | StoreError::NotActivated { .. }
            | StoreError::Setup { .. } => Self::Unavailable(Box::new(e)),
        }
    }
}

impl From<CatalogError> for GatewayError {
    fn from(e: CatalogError) -> Self {
        Self::Internal(Box::new(e))
    }
}
