//! `GatewayError` → `nfsstat3` (RFC 1813 §2.6) and `nfsstat4`: each NFS version's one mapping, an exhaustive
//! match with no `_` arm, so a new gateway error kind breaks the build until it is decided here.

use nfsserve::nfs::nfsstat3;

use crate::gateway::GatewayError;

pub fn nfsstat(e: &GatewayError) -> nfsstat3 {
    match e {
        GatewayError::NotFound(_) => nfsstat3::NFS3ERR_NOENT,
        GatewayError::AlreadyExists(_) => nfsstat3::NFS3ERR_EXIST,
        GatewayError::NotEmpty(_) => nfsstat3::NFS3ERR_NOTEMPTY,
        GatewayError::ReadOnly(_) => nfsstat3::NFS3ERR_ROFS,
        GatewayError::NoSpace(_) => nfsstat3::NFS3ERR_NOSPC,
        GatewayError::InvalidArgument(_) => nfsstat3::NFS3ERR_INVAL,
        GatewayError::OutOfRange(_) => nfsstat3::NFS3ERR_FBIG,
        // Integrity failures are I/O errors, never data (CONTRIBUTING.md, "Errors").
        GatewayError::Corrupt(_) => nfsstat3::NFS3ERR_IO,
        // The bucket may come back: JUKEBOX makes clients retry later instead of failing.
        GatewayError::Unavailable(_) | GatewayError::Busy(_) => nfsstat3::NFS3ERR_JUKEBOX,
        GatewayError::Internal(_) => nfsstat3::NFS3ERR_SERVERFAULT,
        GatewayError::NotDirectory(_) => nfsstat3::NFS3ERR_NOTDIR,
        GatewayError::IsDirectory(_) => nfsstat3::NFS3ERR_ISDIR,
        GatewayError::PermissionDenied(_) => nfsstat3::NFS3ERR_ACCES,
        GatewayError::NameTooLong(_) => nfsstat3::NFS3ERR_NAMETOOLONG,
        GatewayError::NotSupported(_) => nfsstat3::NFS3ERR_NOTSUPP,
        GatewayError::CrossDevice(_) => nfsstat3::NFS3ERR_XDEV,
        GatewayError::Stale(_) => nfsstat3::NFS3ERR_STALE,
    }
}

/// `GatewayError` → `nfsstat4` (RFC 8881 §15), the NFSv4.1 front end's one mapping; exhaustive
/// like `nfsstat`.
pub fn nfsstat4(e: &GatewayError) -> u32 {
    use crate::frontend::nfs::nfs4::consts::*;
    match e {
        GatewayError::NotFound(_) => NFS4ERR_NOENT,
        GatewayError::AlreadyExists(_) => NFS4ERR_EXIST,
        GatewayError::NotEmpty(_) => NFS4ERR_NOTEMPTY,
        GatewayError::ReadOnly(_) => NFS4ERR_ROFS,
        GatewayError::NoSpace(_) => NFS4ERR_NOSPC,
        GatewayError::InvalidArgument(_) => NFS4ERR_INVAL,
        GatewayError::OutOfRange(_) => NFS4ERR_FBIG,
        GatewayError::Corrupt(_) => NFS4ERR_IO,
        // The bucket may come back: DELAY makes clients retry later instead of failing.
        GatewayError::Unavailable(_) | GatewayError::Busy(_) => NFS4ERR_DELAY,
        GatewayError::Internal(_) => NFS4ERR_SERVERFAULT,
        GatewayError::NotDirectory(_) => NFS4ERR_NOTDIR,
        GatewayError::IsDirectory(_) => NFS4ERR_ISDIR,
        GatewayError::PermissionDenied(_) => NFS4ERR_ACCESS,
        GatewayError::NameTooLong(_) => NFS4ERR_NAMETOOLONG,
        GatewayError::NotSupported(_) => NFS4ERR_NOTSUPP,
        GatewayError::CrossDevice(_) => NFS4ERR_XDEV,
        GatewayError::Stale(_) => NFS4ERR_STALE,
    }
}
