//! `tidegate device unlock|lock`: unlock a job's device and serve its S3 endpoint (and, with
//! `--nfs-listen`, its NFS export) in the foreground (the key lives only in that process), or
//! lock it from another shell.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::cli::args::DeviceCommand;
use crate::cli::{UsageError, gateway_error};
use crate::config::Config;
use crate::daemon::device::{Transport, cert_path, serve};
use crate::gateway::import::{JobManifestFile, unlock_job};

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
                let transport = if plain_http {
                    Transport::PlainHttp
                } else {
                    Transport::Https {
                        names: tls_name,
                        cert_path: cert_path(&config.data_dir, &job),
                    }
                };
                let served = serve(
                    device,
                    s3_listen,
                    transport,
                    &config.run_dir(),
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
