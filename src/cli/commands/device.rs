//! `tidegate device unlock|lock`: unlock a job's device and serve its S3 endpoint (and, with
//! `--nfs-listen`, its NFS export) in the foreground (the key lives only in that process), or
//! lock it from another shell.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::cli::args::DeviceCommand;
use crate::cli::gateway_error;
use crate::config::Config;
use crate::gateway::import::{JobManifestFile, unlock_job};

pub fn run(cmd: DeviceCommand, config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    match cmd {
        DeviceCommand::Unlock {
            unlock,
            s3_listen,
            nfs_listen,
        } => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
            let catalog = Arc::new(Catalog::open(&config.catalog_path())?);
            let manifest = JobManifestFile::read(&unlock.manifest).map_err(gateway_error)?;
            rt.block_on(async {
                let device = unlock_job(catalog, &config.data_dir, &manifest, &unlock.unlock_code)
                    .await
                    .map_err(refused)?;
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
                let served =
                    crate::daemon::device::serve(device, s3_listen, &config.run_dir(), |addr| {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(
                            out,
                            "job {job} unlocked: {objects} objects, {bytes} bytes{}",
                            if sealed { " (sealed: read-only)" } else { "" }
                        );
                        let _ = writeln!(out, "s3 endpoint: http://{addr} (bucket {bucket})");
                        let _ = writeln!(out, "access key: {access}");
                        let _ = writeln!(out, "secret key: {secret}");
                        let _ = writeln!(out, "ready");
                        let _ = out.flush();
                    })
                    .await;
                if let Some(nfs) = nfs {
                    nfs.stop().await;
                }
                served.context("serving the device")?;
                writeln!(std::io::stdout(), "locked: job {job}'s key dropped")?;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
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

/// A refused unlock is a usage error (exit 2) with the gateway's message, which names no key
/// material and says nothing about the data.
pub(crate) fn refused(e: crate::gateway::GatewayError) -> anyhow::Error {
    use crate::gateway::GatewayError as E;
    match e {
        E::PermissionDenied(m) => crate::cli::UsageError(m).into(),
        other => gateway_error(other),
    }
}
