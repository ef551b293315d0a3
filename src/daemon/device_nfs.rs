//! The unlocked device's NFS export (`device unlock --nfs-listen`): the file gateway's NFS front
//! end over the device's share (`gateway::import::DeviceShare`), its uploader, and a watcher
//! that makes the export read-only when the job is sealed.
//!
//! Runs in the process that holds the job key, beside the S3 endpoint, and stops with it
//! (`stop`, on lock or SIGTERM). Invariant: every task here holds a clone of the device, so
//! the key is dropped only after `stop` has returned.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gateway::GatewayError;
use crate::gateway::import::{DEFAULT_STAGING_ROOT, Device, DeviceShare};

/// The running export.
#[derive(Debug)]
pub struct DeviceNfs {
    /// Where NFS, MOUNT and the portmapper answer (one port).
    pub addr: SocketAddr,
    /// The export path clients mount: `/<bucket>`.
    pub export: String,
    share: Arc<DeviceShare>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceNfsError {
    #[error("listening for NFS on {listen}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Share(#[from] GatewayError),
}

/// Binds `listen` and serves the device's share on it.
pub async fn start(device: &Device, listen: SocketAddr) -> Result<DeviceNfs, DeviceNfsError> {
    let share = Arc::new(DeviceShare::open(device, Path::new(DEFAULT_STAGING_ROOT))?);
    let listen_err = |source| DeviceNfsError::Listen { listen, source };
    let listener = TcpListener::bind(listen).await.map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let (stop, stop_rx) = watch::channel(false);
    let files = share.files.clone();
    let mut nfs_stop = stop_rx.clone();
    let nfs = tokio::spawn(async move {
        let options = crate::frontend::nfs::nfs4::Options::default();
        let served = crate::frontend::nfs::serve(listener, files, options, async move {
            let _ = nfs_stop.wait_for(|s| *s).await;
        })
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "device NFS export stopped");
        }
    });
    // The uploader also stops at the seal: nothing can be stored after it, and a file created
    // in the instant before the export turned read-only would be retried forever.
    let (upload_stop, upload_rx) = watch::channel(false);
    let uploader = tokio::spawn(share.files.clone().run_uploader(upload_rx));
    let export = format!("/{}", share.name);
    let mut seal_stop = stop_rx;
    let watched = share.clone();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            () = watched.watch_seal() => {}
            _ = seal_stop.wait_for(|s| *s) => {}
        }
        let _ = upload_stop.send(true);
    });
    tracing::info!(%addr, %export, "device NFS export ready");
    Ok(DeviceNfs {
        addr,
        export,
        share,
        stop,
        tasks: vec![nfs, uploader, watcher],
    })
}

impl DeviceNfs {
    /// Stops serving, waits for the tasks, and removes the staging directory (data not
    /// committed is dropped, as a crash would drop it; committed data is in the device).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.share.close();
    }
}
