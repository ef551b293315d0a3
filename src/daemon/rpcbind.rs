//! Port 111 for the NFS front end (`nfs.rpcbind`): serve rpcbind there, or register with the
//! system rpcbind that holds it, or (embedded default only) go on without either. Which one
//! happened goes to the log and to `run/ready.toml`, where `tidegate status` shows it.

use std::net::SocketAddr;
use std::path::Path;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Rpcbind;
use crate::daemon::DaemonError;
use crate::frontend::nfs::portmap::Services;
use crate::frontend::nfs::rpcbind::{self, Registration};

/// What runs for port 111 until shutdown.
#[derive(Debug)]
pub enum Port111 {
    Off,
    Serving(JoinHandle<()>),
    Registered(Registration),
    /// Best effort failed; the reason is in `describe`.
    Unavailable,
}

impl Port111 {
    /// Starts what `setting` asks for; the sentence for `status` comes with it.
    pub async fn start(
        setting: Rpcbind,
        nfs: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Result<(Self, String), DaemonError> {
        let Some(addr) = setting.addr() else {
            return Ok((Self::Off, "off".to_owned()));
        };
        let services = Services { nfs, rpcbind: None };
        let bind_error = match rpcbind::bind(addr).await {
            Ok((tcp, udp)) => {
                let services = Services {
                    rpcbind: tcp.local_addr().ok(),
                    ..services
                };
                let mut stop = stop;
                let task = tokio::spawn(rpcbind::serve(tcp, udp, services, async move {
                    let _ = stop.changed().await;
                }));
                let text = format!("serving on {addr} (TCP and UDP)");
                tracing::info!(rpcbind = %addr, "serving rpcbind for NFS and MOUNT");
                return Ok((Self::Serving(task), text));
            }
            Err(e) => e,
        };
        // Taken (a system rpcbind) or not ours to bind (port 111 needs root): register with
        // whoever holds it.
        match Registration::register(services, Path::new(rpcbind::SYSTEM_SOCKET), addr).await {
            Ok(reg) => {
                let text = format!("registered with the system rpcbind at {}", reg.at());
                tracing::info!(rpcbind = %reg.at(), bind_error = %bind_error, "registered NFS and MOUNT with the system rpcbind");
                Ok((Self::Registered(reg), text))
            }
            Err(e) => {
                if matches!(setting, Rpcbind::BestEffort(_)) {
                    let why = format!("cannot serve {addr} ({bind_error}) nor register ({e})");
                    tracing::warn!("no rpcbind: {why}; clients must be told the NFS port");
                    Ok((Self::Unavailable, format!("unavailable: {why}")))
                } else {
                    Err(DaemonError::Rpcbind {
                        addr,
                        bind: bind_error,
                        register: e,
                    })
                }
            }
        }
    }

    /// Waits for the listener to stop (the stop signal was sent) or unregisters.
    pub async fn stop(self) {
        match self {
            Self::Serving(task) => {
                let _ = task.await;
            }
            Self::Registered(reg) => reg.unregister().await,
            Self::Off | Self::Unavailable => {}
        }
    }
}
