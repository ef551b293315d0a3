//! The NFS front ends over `gateway::files` (docs/design.md §5): our own ONC RPC layer, so the
//! caller's AUTH_UNIX identity and address reach the gateway (squash, allow-lists, owners of
//! new files), with nfsserve's wire types for the NFS structures.
//!
//! One TCP port serves NFS (100003 v3), MOUNT (100005 v3) and the portmapper/rpcbind answers
//! of `portmap.rs` (100000 v2-v4) pointing both at this port, for clients told the port
//! (`port=`/`mountport=`, or libnfs's `?nfsport=&mountport=`). `rpcbind.rs` serves the same
//! answers on port 111, where clients look without being told. Calls on one connection run
//! concurrently (bounded); replies go out as they finish, matched by xid.
//!
//! Must not import another front end or anything below `gateway`. Invariant: malformed input
//! gets an RPC-level rejection or a closed connection, never a panic, and never affects other
//! connections.

pub mod handles;
pub mod mount;
pub mod nfs3;
pub mod nfs4;
pub mod portmap;
pub mod rpc;
pub mod rpcbind;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::gateway::files::{Caller, Files};
use handles::Handles;
use nfs3::{Nfs3, Outcome};
use rpc::{AcceptStat, Auth, RpcError};

/// Calls of one connection being worked on at once.
const CALLS_IN_FLIGHT: usize = 16;

/// What every connection shares.
struct Server {
    files: Arc<Files>,
    handles: Handles,
    nfs4: nfs4::Nfs4,
    portmap: portmap::Services,
}

/// Serves NFS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    files: Arc<Files>,
    nfs4_options: nfs4::Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), std::io::Error> {
    let portmap = portmap::Services {
        nfs: listener.local_addr()?,
        rpcbind: None,
    };
    let handles = Handles::new(files.handle_generation());
    let nfs4 = nfs4::Nfs4::new(&files, nfs4_options).await;
    let server = Arc::new(Server {
        files,
        handles,
        nfs4,
        portmap,
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "nfs accept failed");
                        continue;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(server, stream, peer).await {
                        tracing::debug!(client = %peer, error = %e, "nfs connection closed");
                    }
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn connection(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Result<(), std::io::Error> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CALLS_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            if wr.write_all(&reply).await.is_err() {
                break;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let result = loop {
        let record = match read_record(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(()),
            Err(e) => {
                use std::io::ErrorKind::{ConnectionReset, UnexpectedEof};
                if matches!(e.kind(), ConnectionReset | UnexpectedEof) {
                    tracing::debug!(client = %peer, error = %e, "nfs client went away");
                } else {
                    tracing::warn!(client = %peer, error = %e, "closing nfs connection");
                }
                break Err(e);
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let server = server.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(reply) = handle_record(&server, &record, peer).await {
                let _ = tx.send(rpc::frame(&reply)).await;
            }
            drop(permit);
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// Reads one record (all its fragments); `None` at a clean end of stream.
async fn read_record<R: AsyncReadExt + Unpin>(
    rd: &mut R,
) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut record = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let (last, len) = rpc::fragment_header(h);
        if record.len().saturating_add(len) > rpc::MAX_RECORD_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("RPC record over {} bytes", rpc::MAX_RECORD_BYTES),
            ));
        }
        let start = record.len();
        record.resize(start + len, 0);
        rd.read_exact(&mut record[start..]).await?;
        if last {
            return Ok(Some(record));
        }
    }
}

/// Answers one record; `None` when it deserves no reply (not a call at all).
async fn handle_record(server: &Server, record: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    let call = match rpc::parse_call(record) {
        Ok(c) => c,
        Err(RpcError::Malformed {
            xid: Some(xid),
            reason,
        }) => {
            tracing::warn!(client = %peer, %reason, "malformed rpc call");
            return Some(rpc::accepted(xid, AcceptStat::GarbageArgs));
        }
        Err(e) => {
            tracing::warn!(client = %peer, error = %e, "unreadable rpc message ignored");
            return None;
        }
    };
    if call.rpcvers != rpc::RPC_VERSION {
        return Some(rpc::rpc_mismatch(call.xid));
    }
    let caller = match &call.auth {
        Auth::Unix { uid, gid, gids, .. } => Caller {
            uid: *uid,
            gid: *gid,
            groups: gids.clone(),
            addr: Some(peer.ip()),
        },
        // AUTH_NULL callers are anonymous (RFC 1813 §4.4 leaves it to the server).
        Auth::Null => Caller {
            uid: crate::gateway::files::ANONYMOUS_ID,
            gid: crate::gateway::files::ANONYMOUS_ID,
            groups: Vec::new(),
            addr: Some(peer.ip()),
        },
        Auth::Other(_) => return Some(rpc::auth_error(call.xid, 5)),
    };
    let args = &record[call.args..];
    let outcome = match (call.prog, call.vers) {
        (nfs3::PROGRAM, nfs3::VERSION) => {
            let nfs = Nfs3 {
                files: &server.files,
                handles: &server.handles,
            };
            nfs.dispatch(call.proc_, &caller, args).await
        }
        (nfs3::PROGRAM, nfs4::VERSION) => {
            server
                .nfs4
                .dispatch(&server.files, &server.handles, call.proc_, &caller, args)
                .await
        }
        (mount::PROGRAM, mount::VERSION) => {
            mount::dispatch(&server.files, &server.handles, call.proc_, &caller, args).await
        }
        (portmap::PROGRAM, _) => {
            return Some(portmap::answer(&server.portmap, &call, args, None));
        }
        (nfs3::PROGRAM, _) => return Some(rpc::prog_mismatch(call.xid, 3, 4)),
        (mount::PROGRAM, _) => return Some(rpc::prog_mismatch(call.xid, 3, 3)),
        _ => return Some(rpc::accepted(call.xid, AcceptStat::ProgUnavail)),
    };
    Some(match outcome {
        Outcome::Reply(body) => {
            let mut out = rpc::accepted(call.xid, AcceptStat::Success);
            out.extend_from_slice(&body);
            out
        }
        Outcome::Garbage(reason) => {
            tracing::warn!(client = %peer, prog = call.prog, proc_ = call.proc_, %reason, "garbage arguments");
            rpc::accepted(call.xid, AcceptStat::GarbageArgs)
        }
        Outcome::NoProc => rpc::accepted(call.xid, AcceptStat::ProcUnavail),
    })
}
