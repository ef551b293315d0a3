//! `tidegate device unlock|lock`: unlock a job's device and serve its S3 endpoint (and, with
//! `--nfs-listen`, its NFS export) in the foreground (the key lives only in that process), or
//! lock it from another shell.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::cli::args::{ClusterCommand, ClusterNodeArgs, DeviceCommand};
use crate::cli::{UsageError, gateway_error};
use crate::config::Config;
use crate::daemon::cluster::{self, ClusterFile, ClusterStatus, Setup};
use crate::daemon::device::{Transport, cert_path, serve};
use crate::gateway::import::{JobManifestFile, adopt_job, unlock_job_in};

pub fn run(cmd: DeviceCommand, config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    match cmd {
        DeviceCommand::Unlock {
            unlock,
            s3_listen,
            plain_http,
            tls_name,
            nfs_listen,
        } => {
            // Refused before the unlock: the code should not be spent on an endpoint that
            // would send the device's credentials and data in the clear over a network.
            if plain_http && !s3_listen.ip().is_loopback() {
                return Err(UsageError(format!(
                    "--plain-http is allowed only on a loopback address, not {s3_listen}: \
                     serve HTTPS (the default) or listen on 127.0.0.1"
                ))
                .into());
            }
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
            let catalog = Arc::new(Catalog::open(&config.catalog_path())?);
            let manifest = JobManifestFile::read(&unlock.manifest).map_err(gateway_error)?;
            let cluster_file = ClusterFile::load(&config.data_dir)?;
            if let Some(file) = &cluster_file
                && file.job != manifest.job
            {
                bail!(
                    "this device is in the cluster of job {}, not job {}",
                    file.job,
                    manifest.job
                );
            }
            rt.block_on(async {
                // The key is checked before the cluster starts: a wrong code starts nothing.
                crate::gateway::import::check_unlock(&catalog, &manifest, &unlock.unlock_code)
                    .await
                    .map_err(refused)?;
                let cluster = match &cluster_file {
                    Some(file) => Some(
                        cluster::start(&config.data_dir, file, |line| {
                            let _ = writeln!(std::io::stdout(), "{line}");
                        })
                        .await
                        .context("bringing up the device cluster")?,
                    ),
                    None => None,
                };
                let link = cluster.as_ref().map(|c| c.link.clone());
                let device = match unlock_job_in(
                    catalog,
                    &config.data_dir,
                    &manifest,
                    &unlock.unlock_code,
                    link,
                )
                .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        if let Some(c) = cluster {
                            c.stop().await;
                        }
                        return Err(refused(e));
                    }
                };
                let (access, secret) = device.credentials();
                let (objects, bytes) = device.object_count();
                let bucket = device.bucket_name().to_owned();
                let job = device.job_id().to_owned();
                let sealed = device.is_sealed();
                let nfs = match nfs_listen {
                    Some(listen) => Some(
                        crate::daemon::device_nfs::start(&device, listen)
                            .await
                            .context("starting the device's NFS export")?,
                    ),
                    None => None,
                };
                if let Some(nfs) = &nfs {
                    writeln!(
                        std::io::stdout(),
                        "nfs export: nfs://{}{} (nfsport=mountport={})",
                        nfs.addr,
                        nfs.export,
                        nfs.addr.port()
                    )?;
                }
                let transport = if plain_http {
                    Transport::PlainHttp
                } else {
                    Transport::Https {
                        names: tls_name,
                        cert_path: cert_path(&config.data_dir, &job),
                    }
                };
                let view = cluster.as_ref().map(|c| c.status.clone());
                let served = serve(
                    device,
                    s3_listen,
                    transport,
                    &config.run_dir(),
                    view,
                    |endpoint| {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(
                            out,
                            "job {job} unlocked: {objects} objects, {bytes} bytes{}",
                            if sealed { " (sealed: read-only)" } else { "" }
                        );
                        let _ = writeln!(out, "s3 endpoint: {} (bucket {bucket})", endpoint.url());
                        if let Some((path, fingerprint)) = &endpoint.cert {
                            let _ = writeln!(out, "certificate: {}", path.display());
                            let _ = writeln!(out, "certificate sha256: {fingerprint}");
                        }
                        let _ = writeln!(out, "access key: {access}");
                        let _ = writeln!(out, "secret key: {secret}");
                        let _ = writeln!(out, "ready");
                        let _ = out.flush();
                    },
                )
                .await;
                if let Some(nfs) = nfs {
                    nfs.stop().await;
                }
                if let Some(c) = cluster {
                    c.stop().await;
                }
                served.context("serving the device")?;
                writeln!(std::io::stdout(), "locked: job {job}'s key dropped")?;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Status => {
            let run = config.run_dir();
            let Some(job) = rt.block_on(crate::daemon::device::control(&run, "status"))? else {
                writeln!(std::io::stdout(), "no device is unlocked")?;
                return Ok(ExitCode::SUCCESS);
            };
            let reply = rt
                .block_on(crate::daemon::device::control(&run, "cluster"))?
                .unwrap_or_default();
            let state = rt
                .block_on(crate::daemon::device::control(&run, "state"))?
                .unwrap_or_default();
            let mut out = std::io::stdout().lock();
            writeln!(out, "device: {}", job.trim_start_matches("ok "))?;
            writeln!(
                out,
                "job state: {}",
                match state.trim_start_matches("ok ") {
                    "SEALED" => "SEALED (read-only: every write is refused)",
                    "SEALING" =>
                        "SEALING (a seal is begun: every write is refused; the manifest is not \
                         written yet)",
                    "LOADING" => "LOADING (writes accepted)",
                    other => other,
                }
            )?;
            match reply.strip_prefix("ok ") {
                Some("standalone") => writeln!(out, "cluster: none (standalone device)")?,
                Some(json) => {
                    let status: ClusterStatus =
                        serde_json::from_str(json).context("reading the cluster status")?;
                    for line in status.lines() {
                        writeln!(out, "{line}")?;
                    }
                }
                None => bail!("the device answered {reply:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Cluster(cmd) => cluster_command(cmd, &config),
        DeviceCommand::Lock => {
            match rt.block_on(crate::daemon::device::control(&config.run_dir(), "lock"))? {
                Some(reply) if reply == "ok" => {
                    writeln!(std::io::stdout(), "device locked")?;
                    Ok(ExitCode::SUCCESS)
                }
                Some(reply) => bail!("the device refused to lock: {reply}"),
                None => {
                    writeln!(std::io::stdout(), "no device is unlocked")?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    }
}

fn setup_of(node: ClusterNodeArgs) -> Setup {
    Setup {
        name: node.name,
        rpc_addr: node.rpc_addr,
        s3_addr: node.garage_s3_listen,
        admin_addr: node.garage_admin_listen,
        capacity_bytes: node.capacity.map(|c| c.bytes()),
        garage_bin: node.garage_bin,
    }
}

fn cluster_command(cmd: ClusterCommand, config: &Config) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Catalog::open(&config.catalog_path())?;
    match cmd {
        ClusterCommand::Create {
            manifest,
            devices,
            node,
        } => {
            let manifest = JobManifestFile::read(&manifest).map_err(gateway_error)?;
            if catalog.job(&manifest.job)?.is_none() {
                bail!("job {} was not created on this device", manifest.job);
            }
            let (file, token) =
                cluster::create(&config.data_dir, &manifest.job, devices, &setup_of(node))?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "cluster for job {} created: this device is {:?}, node {}",
                file.job,
                file.name,
                file.peer.unwrap_or_default()
            )?;
            writeln!(out, "devices: {devices}")?;
            writeln!(out, "join token: {token}")?;
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Join {
            token,
            manifest,
            replaces,
            node,
        } => {
            let manifest = JobManifestFile::read(&manifest).map_err(gateway_error)?;
            let file = cluster::join(
                &config.data_dir,
                &manifest.job,
                &token,
                &setup_of(node),
                replaces.as_deref(),
            )?;
            adopt_job(&catalog, &manifest).map_err(gateway_error)?;
            let mut out = std::io::stdout().lock();
            write!(
                out,
                "joined the cluster of job {} as {:?} ({} devices)",
                file.job, file.name, file.size
            )?;
            match &file.replaces {
                Some(dead) => writeln!(
                    out,
                    " in place of {dead:?}; `device unlock` starts the node and, once {dead:?} is \
                     found down, replaces it in the layout"
                )?,
                None => writeln!(out, "; `device unlock` starts the node")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Token => {
            let (file, token) = cluster::token(&config.data_dir)?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "cluster of job {}: this device is {:?} at {}",
                file.job, file.name, file.rpc_addr
            )?;
            writeln!(out, "join token: {token}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A refused unlock is a usage error (exit 2) with the gateway's message, which names no key
/// material and says nothing about the data.
pub(crate) fn refused(e: crate::gateway::GatewayError) -> anyhow::Error {
    use crate::gateway::GatewayError as E;
    match e {
        E::PermissionDenied(m) => crate::cli::UsageError(m).into(),
        other => gateway_error(other),
    }
}
