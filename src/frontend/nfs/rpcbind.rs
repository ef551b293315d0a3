//! Port 111: the portmapper/rpcbind answers of `portmap.rs` served on their own TCP and UDP
//! sockets, or, when a system rpcbind already holds the port, our NFS and MOUNT registered
//! with it (and removed again at shutdown).
//!
//! Both transports are needed: libnfs (and QEMU through it) asks PMAP GETPORT over TCP, while
//! the kernel's mount.nfs asks rpcbind over UDP first (nfs-utils' `nfs_getport`) and probes
//! MOUNT over UDP before TCP.
//!
//! A system rpcbind accepts SET and UNSET only from local callers, which it recognises by the
//! AF_LOCAL socket (`/run/rpcbind.sock`): loopback TCP counts only with `rpcbind -L`. So we
//! register through that socket, and over TCP only when there is none.
//!
//! Invariant: a call we cannot read gets GARBAGE_ARGS or nothing, never a panic, and never
//! stops the listener.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};

use super::portmap::{self, MAPPINGS, Rpcb, Services};
use super::rpc::{self, AcceptStat, RpcError};

/// Where a system rpcbind takes registrations from local processes (libtirpc's
/// `_PATH_RPCBINDSOCK`; `/var/run` is a link to `/run` on current systems).
pub const SYSTEM_SOCKET: &str = "/run/rpcbind.sock";
/// A system rpcbind answers at once or not at all.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP call is one datagram; rpcbind calls are small (RFC 1833 strings are short).
const MAX_DATAGRAM_BYTES: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RpcbindError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the rpcbind at {at} refused to register program {prog} version {vers}")]
    Refused { at: String, prog: u32, vers: u32 },
    #[error("the rpcbind at {at} sent no valid answer to SET/UNSET")]
    BadReply { at: String },
}

/// Binds port 111 (or what is configured) for TCP and UDP; both or neither.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, UdpSocket), std::io::Error> {
    let tcp = TcpListener::bind(addr).await?;
    let udp = UdpSocket::bind(addr).await?;
    Ok((tcp, udp))
}

/// Answers portmapper/rpcbind calls on `tcp` and `udp` until `shutdown` resolves.
pub async fn serve(
    tcp: TcpListener,
    udp: UdpSocket,
    services: Services,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let udp_local = udp.local_addr().ok().map(|a| a.ip());
    let mut datagram = vec![0u8; MAX_DATAGRAM_BYTES];
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, peer, services).await {
                            tracing::debug!(client = %peer, error = %e, "rpcbind connection closed");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "rpcbind accept failed"),
            },
            received = udp.recv_from(&mut datagram) => match received {
                Ok((n, peer)) => {
                    let call = datagram.get(..n).unwrap_or_default();
                    if let Some(reply) = reply_to(&services, call, peer, udp_local)
                        && let Err(e) = udp.send_to(&reply, peer).await
                    {
                        tracing::debug!(client = %peer, error = %e, "rpcbind reply not sent");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "rpcbind receive failed"),
            },
            () = &mut shutdown => return,
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    services: Services,
) -> Result<(), std::io::Error> {
    let local = stream.local_addr().ok().map(|a| a.ip());
    let (mut rd, mut wr) = stream.into_split();
    while let Some(record) = super::read_record(&mut rd).await? {
        if let Some(reply) = reply_to(&services, &record, peer, local) {
            wr.write_all(&rpc::frame(&reply)).await?;
        }
    }
    Ok(())
}

/// The reply to one call; `None` when it is not a call at all.
fn reply_to(
    services: &Services,
    record: &[u8],
    peer: SocketAddr,
    local: Option<IpAddr>,
) -> Option<Vec<u8>> {
    match rpc::parse_call(record) {
        Ok(call) if call.rpcvers != rpc::RPC_VERSION => Some(rpc::rpc_mismatch(call.xid)),
        Ok(call) => Some(portmap::answer(
            services,
            &call,
            &record[call.args..],
            local,
        )),
        Err(RpcError::Malformed {
            xid: Some(xid),
            reason,
        }) => {
            tracing::warn!(client = %peer, %reason, "malformed rpcbind call");
            Some(rpc::accepted(xid, AcceptStat::GarbageArgs))
        }
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "unreadable rpcbind message ignored");
            None
        }
    }
}

/// How we reach a system rpcbind to register.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Via {
    Local(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// Our services registered with a system rpcbind; `unregister` removes them.
#[derive(Debug)]
pub struct Registration {
    via: Via,
    services: Services,
}

impl Registration {
    /// Where the system rpcbind was reached, for the log and `status`.
    pub fn at(&self) -> String {
        self.via.to_string()
    }

    /// Registers NFS and MOUNT with the system rpcbind: through `socket` when it exists, else
    /// over TCP at `addr`. Stale entries of a previous run (a crash leaves them) are removed
    /// first, since rpcbind refuses to overwrite a mapping.
    pub async fn register(
        services: Services,
        socket: &Path,
        addr: SocketAddr,
    ) -> Result<Self, RpcbindError> {
        let via = if socket.exists() {
            Via::Local(socket.to_path_buf())
        } else {
            Via::Tcp(addr)
        };
        let reg = Self { via, services };
        reg.exchange(UNSET).await?;
        reg.exchange(SET).await?;
        Ok(reg)
    }

    /// Removes our mappings (at shutdown); a failure is only logged, since rpcbind then keeps
    /// a mapping that the next start replaces.
    pub async fn unregister(self) {
        if let Err(e) = self.exchange(UNSET).await {
            tracing::warn!(rpcbind = %self.via, error = %e, "unregistering from rpcbind");
        }
    }

    /// Sends SET or UNSET for every mapping on one connection; SET must be accepted.
    async fn exchange(&self, proc_: u32) -> Result<(), RpcbindError> {
        let at = self.via.to_string();
        let io = |what: &str| {
            let what = format!("{what} the rpcbind at {at}");
            move |source| RpcbindError::Io { what, source }
        };
        let talk = async {
            match &self.via {
                Via::Local(p) => {
                    let s = UnixStream::connect(p).await.map_err(io("connecting to"))?;
                    self.calls(s, proc_).await
                }
                Via::Tcp(a) => {
                    let s = TcpStream::connect(a).await.map_err(io("connecting to"))?;
                    self.calls(s, proc_).await
                }
            }
        };
        tokio::time::timeout(REGISTER_TIMEOUT, talk)
            .await
            .map_err(|_| RpcbindError::Io {
                what: format!("waiting for the rpcbind at {at}"),
                source: std::io::ErrorKind::TimedOut.into(),
            })?
    }

    async fn calls<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        proc_: u32,
    ) -> Result<(), RpcbindError> {
        let at = self.via.to_string();
        let addr = portmap::universal_address(self.services.nfs);
        let netid = if self.services.nfs.is_ipv4() {
            "tcp"
        } else {
            "tcp6"
        };
        for (i, m) in MAPPINGS.iter().enumerate() {
            let mut args = Vec::new();
            Rpcb {
                prog: m.prog,
                vers: m.vers,
                netid: netid.to_owned(),
                // UNSET matches on program and version only (RFC 1833 §2.2.1).
                addr: if proc_ == SET {
                    addr.clone()
                } else {
                    String::new()
                },
                owner: portmap::OWNER.to_owned(),
            }
            .encode(&mut args);
            let xid = 0x7462_0000 | u32::try_from(i).unwrap_or(0) << 4 | proc_;
            let call = portmap::call(xid, portmap::RPCB_HIGHEST, proc_, &args);
            let sent = stream.write_all(&rpc::frame(&call)).await;
            sent.map_err(|source| RpcbindError::Io {
                what: format!("writing to the rpcbind at {at}"),
                source,
            })?;
            let reply = super::read_record(&mut stream)
                .await
                .map_err(|source| RpcbindError::Io {
                    what: format!("reading from the rpcbind at {at}"),
                    source,
                })?
                .ok_or_else(|| RpcbindError::BadReply { at: at.clone() })?;
            match portmap::bool_reply(&reply, xid) {
                Some(true) => {}
                // UNSET of something not registered answers FALSE: nothing to remove.
                Some(false) if proc_ == UNSET => {}
                Some(false) => {
                    return Err(RpcbindError::Refused {
                        at,
                        prog: m.prog,
                        vers: m.vers,
                    });
                }
                None => return Err(RpcbindError::BadReply { at }),
            }
        }
        Ok(())
    }
}

const SET: u32 = 1;
const UNSET: u32 = 2;
