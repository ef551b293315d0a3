//! `tidegate job create|status|seal|import|export|complete`: bulk import and export jobs (the
//! device mode).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::cli::args::{JobCommand, JobKindArgs};
use crate::cli::commands::device::refused;
use crate::cli::{UsageError, gateway_error};
use crate::config::{ByteSize, Config};
use crate::gateway::GatewayError;
use crate::gateway::import::{
    Device, ExportOptions, Failure, ImportOptions, ImportProgress, JobKind, JobManifestFile,
    JobRequest, complete_job, create_job, open_export, run_export, run_import, unlock_job,
    unlock_job_in,
};
use crate::store::device::KdfParams;

pub fn run(cmd: JobCommand, config: Config) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Arc::new(Catalog::open(&config.catalog_path())?);
    let rt = crate::cli::runtime()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        JobCommand::Create { kind } => {
            let (kind, url, common, function) = match kind {
                JobKindArgs::Import {
                    target,
                    common,
                    on_put,
                } => (
                    JobKind::Import,
                    target,
                    common,
                    super::function::request(on_put)?,
                ),
                JobKindArgs::Export { source, common } => (JobKind::Export, source, common, None),
            };
            let pending = common.manifest_out.clone();
            let manifest_path = match pending {
                Some(p) => p,
                None => std::env::current_dir()?.join("job.manifest.json"),
            };
            let created = create_job(
                &catalog,
                &JobRequest {
                    kind,
                    bucket_url: url,
                    endpoint: common.endpoint,
                    region: common.region,
                    manifest_path,
                    kdf: KdfParams::DEFAULT,
                },
            )
            .map_err(gateway_error)?;
            if let Some(function) = &function {
                super::function::install(&config, &created.id, function)?;
            }
            writeln!(out, "job: {}", created.id)?;
            writeln!(out, "unlock code: {}", created.unlock_code)?;
            writeln!(out, "manifest file: {}", created.manifest_path.display())?;
            writeln!(out, "s3 access key: {}", created.access_key)?;
            writeln!(out, "s3 secret key: {}", created.secret_key)?;
            writeln!(
                out,
                "keep the unlock code and the manifest file apart: both unlock the device, and \
                 the code is not stored anywhere"
            )?;
        }
        JobCommand::Status { job } => {
            let all = crate::cli::client::Session::open(&config)?.run(|m| m.jobs())?;
            let jobs: Vec<_> =
                match &job {
                    None => all,
                    Some(id) => vec![all.into_iter().find(|j| j.id == *id).ok_or_else(|| {
                        gateway_error(GatewayError::NotFound(format!("job {id}")))
                    })?],
                };
            writeln!(
                out,
                "{:<16} {:<7} {:<10} {:>8} {:>10} {:>8} {:>6}  BUCKET / REASON",
                "JOB", "KIND", "STATE", "OBJECTS", "BYTES", "IMPORTED", "FAILED"
            )?;
            for j in jobs {
                writeln!(
                    out,
                    "{:<16} {:<7} {:<10} {:>8} {:>10} {:>8} {:>6}  {}{}",
                    j.id,
                    j.kind,
                    j.state.to_ascii_uppercase(),
                    j.objects,
                    ByteSize(j.bytes).to_string(),
                    j.imported_objects,
                    j.failed_objects,
                    j.target.as_deref().or(j.source.as_deref()).unwrap_or(""),
                    j.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                )?;
            }
        }
        JobCommand::Seal {
            manifest,
            unlock_code,
        } => {
            let reply = rt.block_on(crate::daemon::device::control(&config.run_dir(), "seal"))?;
            let (objects, bytes) = match reply {
                Some(reply) => {
                    let Some(rest) = reply.strip_prefix("ok ") else {
                        bail!("sealing failed: {}", reply.trim_start_matches("error "));
                    };
                    let mut it = rest.split(' ').map(str::parse::<u64>);
                    match (it.next(), it.next()) {
                        (Some(Ok(o)), Some(Ok(b))) => (o, b),
                        _ => bail!("unexpected reply from the device: {reply}"),
                    }
                }
                None => {
                    if crate::daemon::cluster::ClusterFile::load(&config.data_dir)?.is_some() {
                        bail!(
                            "this device is in a device cluster: seal through an unlocked device \
                             (`tidegate device unlock`, then `tidegate job seal`)"
                        );
                    }
                    let (Some(manifest), Some(code)) = (manifest, unlock_code) else {
                        return Err(UsageError(
                            "no device is unlocked; give --manifest and --unlock-code to seal \
                             offline"
                                .into(),
                        )
                        .into());
                    };
                    let file = JobManifestFile::read(&manifest).map_err(gateway_error)?;
                    rt.block_on(async {
                        let device = unlock_job(catalog.clone(), &config.data_dir, &file, &code)
                            .await
                            .map_err(refused)?;
                        device.seal().await.map_err(gateway_error)
                    })?
                }
            };
            writeln!(
                out,
                "sealed: {objects} objects, {} in the signed device manifest",
                ByteSize(bytes)
            )?;
        }
        JobCommand::Import {
            unlock,
            parallel,
            upload_limit,
            share,
        } => {
            let serving = rt
                .block_on(crate::daemon::device::control(&config.run_dir(), "status"))?
                .is_some();
            let cluster_file = crate::daemon::cluster::ClusterFile::load(&config.data_dir)?;
            if serving && cluster_file.is_none() {
                return Err(UsageError(
                    "the device is unlocked and serving; lock it (`tidegate device lock`) before \
                     importing"
                        .into(),
                )
                .into());
            }
            let file = JobManifestFile::read(&unlock.manifest).map_err(gateway_error)?;
            let mut opts = ImportOptions::new(config.data_dir.clone());
            opts.parallel = parallel.max(1);
            opts.multipart_threshold = config.bucket.multipart_threshold;
            opts.part_size = config.bucket.part_size;
            opts.upload_limit = upload_limit.map(|b| b.0);
            opts.share = share;
            // A cluster device reads the data set through its Garage node: the unlocked
            // device's (which keeps serving, read-only), or one started for this import.
            let (link, started) = match &cluster_file {
                None => (None, None),
                Some(f) if serving => (
                    Some(crate::daemon::cluster::attach(f).context("reaching the cluster")?),
                    None,
                ),
                Some(f) => {
                    let running = rt
                        .block_on(crate::daemon::cluster::start(&config.data_dir, f, |line| {
                            eprintln!("{line}");
                        }))
                        .context("bringing up the device cluster")?;
                    (Some(running.link.clone()), Some(running))
                }
            };
            let report = transfer(
                &rt,
                "import",
                unlock_job_in(
                    catalog.clone(),
                    &config.data_dir,
                    &file,
                    &unlock.unlock_code,
                    link,
                ),
                |device, progress| async move { run_import(&device, &opts, progress).await },
            );
            if let Some(running) = started {
                rt.block_on(running.stop());
            }
            let report = report?;
            writeln!(
                out,
                "job {}: {} — {} of {} objects imported ({} of {}), {} failed; this run sent {} \
                 objects, {} in {:.1} s ({} PUT requests{})",
                report.job,
                report.state,
                report.imported_objects,
                report.objects,
                ByteSize(report.imported_bytes),
                ByteSize(report.bytes),
                report.failed_objects,
                report.run_uploaded_objects,
                ByteSize(report.run_uploaded_bytes),
                report.run_seconds,
                report.run_put_requests,
                if report.run_reused_bytes > 0 {
                    format!(
                        "; {} of parts already in the target not sent again",
                        ByteSize(report.run_reused_bytes)
                    )
                } else {
                    String::new()
                }
            )?;
            list_failures(&mut out, &report.failures)?;
            if let Some(share) = &report.share {
                writeln!(
                    out,
                    "share {share}: {} objects found already whole in the target, not sent again",
                    report.run_found_objects
                )?;
            }
            if !report.pending_shares.is_empty() {
                writeln!(
                    out,
                    "share {} done; shares {} are not finished: the last share to finish writes \
                     the job's report",
                    report.share.as_deref().unwrap_or("1/1"),
                    report.pending_shares.join(", ")
                )?;
                return Ok(ExitCode::from(u8::from(report.failed_objects > 0)));
            }
            writeln!(
                out,
                "report: {}/device/{}/report.json and imports/{}/report.json in the target",
                config.data_dir.display(),
                report.job,
                report.job
            )?;
            if report.failed_objects > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        JobCommand::Export { unlock, parallel } => {
            let file = JobManifestFile::read(&unlock.manifest).map_err(gateway_error)?;
            let mut opts = ExportOptions::new(config.data_dir.clone());
            opts.parallel = parallel.max(1);
            let report = transfer(
                &rt,
                "export",
                open_export(
                    catalog.clone(),
                    &config.data_dir,
                    &file,
                    &unlock.unlock_code,
                ),
                |device, progress| async move { run_export(&device, &opts, progress).await },
            )?;
            writeln!(
                out,
                "job {}: {} — {} of {} objects on the device ({} of {}), {} failed; this run \
                 copied {} objects, {} in {:.1} s ({} GET requests), skipped {} already copied",
                report.job,
                report.state,
                report.exported_objects,
                report.objects,
                ByteSize(report.exported_bytes),
                ByteSize(report.bytes),
                report.failed_objects,
                report.run_copied_objects,
                ByteSize(report.run_copied_bytes),
                report.run_seconds,
                report.run_get_requests,
                report.run_skipped_objects
            )?;
            list_failures(&mut out, &report.failures)?;
            writeln!(
                out,
                "report: {}/device/{}/report.json",
                config.data_dir.display(),
                report.job
            )?;
            if report.failed_objects > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        JobCommand::Complete { job } => {
            complete_job(&catalog, &job).map_err(gateway_error)?;
            writeln!(out, "job {job}: COMPLETE")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the device (`open`), then runs a transfer on it (`run`) with a progress display.
fn transfer<R, F, Fut>(
    rt: &tokio::runtime::Runtime,
    what: &'static str,
    open: impl Future<Output = Result<Device, GatewayError>>,
    run: F,
) -> Result<R>
where
    F: FnOnce(Device, Arc<ImportProgress>) -> Fut,
    Fut: Future<Output = Result<R, GatewayError>>,
{
    let progress = Arc::new(ImportProgress::default());
    let (report, secs) = rt.block_on(async {
        let device = open.await.map_err(refused)?;
        let started = Instant::now();
        let drawer = tokio::spawn(draw(progress.clone(), what));
        let report = run(device, progress.clone()).await;
        drawer.abort();
        Ok::<_, anyhow::Error>((
            report.map_err(gateway_error)?,
            started.elapsed().as_secs_f64(),
        ))
    })?;
    eprintln!("{}", line(&progress, what, secs));
    Ok(report)
}

fn list_failures(out: &mut impl Write, failures: &[Failure]) -> std::io::Result<()> {
    for f in failures {
        writeln!(out, "failed: {} ({} bytes): {}", f.key, f.size, f.reason)?;
    }
    Ok(())
}

/// Redraws a transfer's progress on stderr: in place on a terminal, a line every 5 s elsewhere.
async fn draw(progress: Arc<ImportProgress>, what: &'static str) {
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let every = if terminal {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    };
    loop {
        tokio::time::sleep(every).await;
        let text = line(&progress, what, started.elapsed().as_secs_f64());
        if terminal {
            eprint!("\r{text}\x1b[K");
        } else {
            eprintln!("{text}");
        }
    }
}

fn line(p: &ImportProgress, what: &str, secs: f64) -> String {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (objects, total_objects) = (get(&p.done_objects), get(&p.total_objects));
    let (bytes, total_bytes) = (get(&p.done_bytes), get(&p.total_bytes));
    let run_bytes = bytes.saturating_sub(get(&p.resumed_bytes));
    let rate = run_bytes as f64 / secs.max(1e-3);
    let eta = if rate > 0.0 && bytes < total_bytes {
        let s = ((total_bytes - bytes) as f64 / rate) as u64;
        format!("ETA {}:{:02}", s / 60, s % 60)
    } else {
        "ETA -:--".to_owned()
    };
    format!(
        "{what} {objects}/{total_objects} objects, {} / {}, {:.1} MiB/s, {} failed, {eta}",
        ByteSize(bytes),
        ByteSize(total_bytes),
        rate / f64::from(1u32 << 20),
        get(&p.failed_objects),
    )
}
