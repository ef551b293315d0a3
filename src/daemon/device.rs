//! Running an unlocked device: its S3 endpoint and a control socket (`run/device.sock`) through
//! which `job seal` and `device lock` reach the process that holds the key.
//!
//! The control protocol is one line each way: `seal` → `ok <objects> <bytes>`, `lock` → `ok`
//! (then the process drops the key and exits), `status` → `ok <job>`, `state` → `ok LOADING|SEALING|SEALED`, `cluster` → `ok <JSON of
//! the cluster's status>` or `ok standalone`; failures are `error <message>`. Invariant: the key lives only in this process; locking ends it. The
//! endpoint's TLS key (a fresh one per unlock) likewise lives only here; its certificate is
//! written to `DATA_DIR/device/<job>/endpoint-cert.pem` for clients to trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};

use crate::frontend::s3::EndpointTls;
use crate::gateway::import::{Device, device_dir};

/// The cluster's status as the health watch keeps it, for `device status`.
pub type ClusterView = std::sync::Arc<std::sync::RwLock<crate::daemon::cluster::ClusterStatus>>;

/// How the S3 endpoint speaks. The CLI allows plain HTTP on a loopback address only.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTPS with a self-signed certificate made now, naming the listen address, `localhost`
    /// and these extra names (IP addresses or DNS names).
    Https {
        names: Vec<String>,
        /// Where the certificate goes: `cert_path(data_dir, job)`.
        cert_path: PathBuf,
    },
    PlainHttp,
}

/// What `serve` reports once the endpoint listens.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The certificate file and its SHA-256 fingerprint, when serving HTTPS.
    pub cert: Option<(PathBuf, String)>,
}

impl Endpoint {
    pub fn url(&self) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// `DATA_DIR/device/<job>/endpoint-cert.pem`: the endpoint's certificate while HTTPS is served.
pub fn cert_path(data_dir: &Path, job: &str) -> PathBuf {
    device_dir(data_dir, job).join("endpoint-cert.pem")
}

/// Makes this unlock's certificate and writes it (never the key) where clients can take it.
fn endpoint_tls(
    device: &Device,
    listen: SocketAddr,
    names: &[String],
    path: &Path,
) -> std::io::Result<EndpointTls> {
    let tls = EndpointTls::self_signed(listen.ip(), names, device.job_id())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, tls.cert_pem())?;
    std::fs::rename(&tmp, path)?;
    Ok(tls)
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("device.sock")
}

/// Sends one command to the unlocked device; `Ok(None)` when no device process is running.
pub async fn control(run_dir: &Path, command: &str) -> std::io::Result<Option<String>> {
    let mut stream = match UnixStream::connect(socket_path(run_dir)).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    Ok(Some(line.trim_end().to_owned()))
}

/// Serves `device` on `listen` until locked (control socket) or SIGTERM/SIGINT; calls `ready`
/// with the bound endpoint once both sockets listen.
pub async fn serve(
    device: Device,
    listen: SocketAddr,
    transport: Transport,
    run_dir: &Path,
    cluster: Option<ClusterView>,
    ready: impl FnOnce(&Endpoint),
) -> std::io::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    let sock = socket_path(run_dir);
    if control(run_dir, "status").await?.is_some() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "a device is already unlocked on this data dir (run `tidegate device lock` first)",
        ));
    }
    let _ = std::fs::remove_file(&sock);
    let (tls, cert) = match transport {
        Transport::Https { names, cert_path } => {
            let tls = endpoint_tls(&device, listen, &names, &cert_path)?;
            let fingerprint = tls.fingerprint().to_owned();
            (Some(tls), Some((cert_path, fingerprint)))
        }
        Transport::PlainHttp => (None, None),
    };
    let control_listener = UnixListener::bind(&sock)?;
    let listener = TcpListener::bind(listen).await?;
    let endpoint = Endpoint {
        addr: listener.local_addr()?,
        cert,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let s3 = tokio::spawn(crate::frontend::s3::serve(device.clone(), listener, tls, {
        let mut rx = stop_tx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }));
    ready(&endpoint);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = stop_rx.changed() => break,
            accepted = control_listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let device = device.clone();
                let stop_tx = stop_tx.clone();
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &device, cluster.as_ref(), &stop_tx).await {
                        tracing::warn!(error = %e, "device control connection");
                    }
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = s3.await;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

async fn handle(
    stream: UnixStream,
    device: &Device,
    cluster: Option<&ClusterView>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let lock = line.trim() == "lock";
    let reply = match line.trim() {
        "status" => format!("ok {}", device.job_id()),
        "state" => format!("ok {}", device.seal_state()),
        "seal" => match device.seal().await {
            Ok((objects, bytes)) => format!("ok {objects} {bytes}"),
            Err(e) => format!("error {e}"),
        },
        "lock" => "ok".to_owned(),
        "cluster" => match cluster {
            None => "ok standalone".to_owned(),
            Some(view) => {
                let snapshot = view.read().unwrap_or_else(|p| p.into_inner()).clone();
                match serde_json::to_string(&snapshot) {
                    Ok(json) => format!("ok {json}"),
                    Err(e) => format!("error {e}"),
                }
            }
        },
        other => format!("error unknown command {other:?}"),
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    write.flush().await?;
    if lock {
        let _ = stop.send(true);
    }
    Ok(())
}
