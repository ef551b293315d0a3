//! MOUNT v3 (RFC 1813 appendix I): NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT.
//!
//! MNT resolves `/SHARE` or a directory below it through the gateway (which checks the
//! share's allowed clients) and hands back a handle; we keep no mount list (DUMP answers an
//! empty one, UMNT is a no-op), as a restart would lose it anyway.

use crate::frontend::nfs::handles::Handles;
use crate::frontend::nfs::nfs3::Outcome;
use crate::frontend::nfs::rpc::{AUTH_UNIX, Reader, RpcError};
use crate::gateway::GatewayError;
use crate::gateway::files::{Caller, Files};

pub const PROGRAM: u32 = 100_005;
pub const VERSION: u32 = 3;
const MNTPATHLEN: usize = 1024;

/// mountstat3 (RFC 1813 appendix I).
fn mountstat(e: &GatewayError) -> u32 {
    match e {
        GatewayError::NotFound(_) | GatewayError::Stale(_) => 2,
        GatewayError::PermissionDenied(_) => 13,
        GatewayError::NotDirectory(_) => 20,
        GatewayError::InvalidArgument(_) | GatewayError::CrossDevice(_) => 22,
        GatewayError::NameTooLong(_) => 63,
        GatewayError::NotSupported(_) => 10004,
        GatewayError::AlreadyExists(_)
        | GatewayError::NotEmpty(_)
        | GatewayError::ReadOnly(_)
        | GatewayError::NoSpace(_)
        | GatewayError::OutOfRange(_)
        | GatewayError::Corrupt(_)
        | GatewayError::Unavailable(_)
        | GatewayError::Busy(_)
        | GatewayError::Internal(_)
        | GatewayError::IsDirectory(_) => 10006,
    }
}

fn push(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn push_opaque(out: &mut Vec<u8>, data: &[u8]) {
    push(out, u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0, (4 - data.len() % 4) % 4));
}

pub async fn dispatch(
    files: &Files,
    handles: &Handles,
    proc_: u32,
    caller: &Caller,
    args: &[u8],
) -> Outcome {
    let mut out = Vec::new();
    match proc_ {
        0 | 3 | 4 => {
            // NULL, UMNT (its path is read for validity), UMNTALL: void results.
            if proc_ == 3
                && let Err(e) = Reader::new(args, 0).opaque(MNTPATHLEN)
            {
                return garbage(e);
            }
        }
        1 => {
            let path = match Reader::new(args, 0).opaque(MNTPATHLEN) {
                Ok(p) => String::from_utf8_lossy(p).into_owned(),
                Err(e) => return garbage(e),
            };
            match files.export(caller, &path).await {
                Ok(export) => {
                    tracing::info!(export = %path, client = ?caller.addr, "mount");
                    push(&mut out, 0);
                    push_opaque(&mut out, &handles.encode(export.root));
                    push(&mut out, 1);
                    push(&mut out, AUTH_UNIX);
                }
                Err(e) => {
                    tracing::info!(export = %path, client = ?caller.addr, error = %e, "mount refused");
                    push(&mut out, mountstat(&e));
                }
            }
        }
        2 => push(&mut out, 0),
        5 => {
            match files.exports().await {
                Ok(list) => {
                    for dir in list {
                        push(&mut out, 1);
                        push_opaque(&mut out, dir.as_bytes());
                        // No group list: the allow-list is enforced per call, not advertised.
                        push(&mut out, 0);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing exports"),
            }
            push(&mut out, 0);
        }
        _ => return Outcome::NoProc,
    }
    Outcome::Reply(out)
}

fn garbage(e: RpcError) -> Outcome {
    Outcome::Garbage(e.to_string())
}
