//! `GatewayError` → errno for FUSE replies: the front end's one mapping, an exhaustive match
//! with no `_` arm (CONTRIBUTING.md, "Errors").

use fuser::Errno;

use crate::gateway::GatewayError;

pub fn errno(e: &GatewayError) -> Errno {
    match e {
        GatewayError::NotFound(_) => Errno::ENOENT,
        GatewayError::AlreadyExists(_) => Errno::EEXIST,
        GatewayError::NotEmpty(_) => Errno::ENOTEMPTY,
        GatewayError::ReadOnly(_) => Errno::EROFS,
        GatewayError::NoSpace(_) => Errno::ENOSPC,
        GatewayError::InvalidArgument(_) => Errno::EINVAL,
        GatewayError::OutOfRange(_) => Errno::EFBIG,
        // Integrity failures are I/O errors, never data (CONTRIBUTING.md, "Errors").
        GatewayError::Corrupt(_) => Errno::EIO,
        // The bucket may come back; EAGAIN lets the application decide to retry.
        GatewayError::Unavailable(_) | GatewayError::Busy(_) => Errno::EAGAIN,
        GatewayError::Internal(_) => Errno::EIO,
        GatewayError::NotDirectory(_) => Errno::ENOTDIR,
        GatewayError::IsDirectory(_) => Errno::EISDIR,
        GatewayError::PermissionDenied(_) => Errno::EACCES,
        GatewayError::NameTooLong(_) => Errno::ENAMETOOLONG,
        GatewayError::NotSupported(_) => Errno::ENOTSUP,
        GatewayError::CrossDevice(_) => Errno::EXDEV,
        GatewayError::Stale(_) => Errno::ESTALE,
    }
}
