//! `tidegate volume create|list|delete|import|export`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use crate::catalog::Catalog;
use crate::catalog::volumes::VolumeMode;
use crate::cli::args::{ImageFormatArg, VolumeCommand, VolumeModeArg};
use crate::cli::daemon_api::{DaemonApi, items, route, segment};
use crate::cli::progress::Bar;
use crate::cli::{UsageError, gateway_error as usage};
use crate::config::{ByteSize, Config};
use crate::daemon::{self, Engine};
use crate::gateway::volumes::image::{self, ImageError, ImageFormat};
use crate::gateway::volumes::{self, CHUNK_SIZE, CreateVolume};

pub fn run(cmd: VolumeCommand, config: Config) -> Result<ExitCode> {
    route(config, cmd, through_api, local)
}

/// Create, list and delete through a running daemon's API; anything else (image import and
/// export need the local disks) is handed back.
fn through_api(
    api: &DaemonApi,
    _config: &Config,
    cmd: VolumeCommand,
    out: &mut impl Write,
) -> Result<Option<VolumeCommand>> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            from_snapshot,
            mode,
            local_path,
            preserve_existing,
        } => {
            let v = api.post(
                "/volumes",
                json!({
                    "name": name,
                    "size": size.map(ByteSize::bytes),
                    "from_snapshot": from_snapshot,
                    "mode": volume_mode(mode).as_str(),
                    "local_path": local_path,
                    "preserve_existing": preserve_existing,
                }),
            )?;
            writeln!(
                out,
                "created volume {} ({}, {}), target {}",
                v["name"].as_str().unwrap_or(&name),
                ByteSize(v["size_bytes"].as_u64().unwrap_or(0)),
                v["mode"].as_str().unwrap_or("?"),
                v["target"].as_str().unwrap_or("?")
            )?;
        }
        VolumeCommand::List => {
            list_header(out)?;
            let all = api.get("/volumes")?;
            for v in items(&all) {
                list_line(
                    out,
                    v["name"].as_str().unwrap_or("?"),
                    v["size_bytes"].as_u64().unwrap_or(0),
                    v["mode"].as_str().unwrap_or("?"),
                    v["in_bucket_bytes"].as_u64().unwrap_or(0),
                    v["target"].as_str().unwrap_or("?"),
                )?;
            }
        }
        VolumeCommand::Delete { name } => {
            api.delete(&format!("/volumes/{}", segment(&name)))?;
            writeln!(out, "deleted volume {name}")?;
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

fn volume_mode(mode: VolumeModeArg) -> VolumeMode {
    match mode {
        VolumeModeArg::Cached => VolumeMode::Cached,
        VolumeModeArg::Stored => VolumeMode::Stored,
    }
}

fn list_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>10} {:>7} {:>12}  TARGET",
        "NAME", "SIZE", "MODE", "IN BUCKET"
    )
}

fn list_line(
    out: &mut impl Write,
    name: &str,
    size: u64,
    mode: &str,
    in_bucket: u64,
    target: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>10} {:>7} {:>12}  {}",
        name,
        ByteSize(size).to_string(),
        mode,
        ByteSize(in_bucket).to_string(),
        target
    )
}

/// The same commands on the catalog and the bucket directly, with no daemon running.
fn local(cmd: VolumeCommand, config: Config) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Arc::new(Catalog::open(&config.catalog_path())?);
    let mut out = std::io::stdout().lock();
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            from_snapshot,
            mode,
            local_path,
            preserve_existing,
        } => {
            let mode = volume_mode(mode);
            let row = match (from_snapshot, size) {
                (Some(snapshot), _) => {
                    let rt = crate::cli::runtime()?;
                    let engine = rt.block_on(crate::daemon::Engine::open(config.clone()))?;
                    rt.block_on(crate::gateway::volumes::snapshot::restore(
                        &engine.catalog,
                        &engine.chunks,
                        &snapshot,
                        &name,
                        mode,
                        local_path.as_deref(),
                    ))
                    .map_err(usage)?
                }
                (None, size) => volumes::create(
                    &catalog,
                    &CreateVolume {
                        name: &name,
                        size_bytes: size.map(ByteSize::bytes),
                        mode,
                        local_path: local_path.as_deref(),
                        preserve_existing,
                    },
                )
                .map_err(usage)?,
            };
            writeln!(
                out,
                "created volume {} ({}, {}), target {}",
                row.name,
                ByteSize(row.size_bytes),
                row.mode.as_str(),
                crate::daemon::volumes::target_name(&config, &row.name)
            )?;
        }
        VolumeCommand::List => {
            list_header(&mut out)?;
            for v in volumes::list(&catalog)? {
                list_line(
                    &mut out,
                    &v.row.name,
                    v.row.size_bytes,
                    v.row.mode.as_str(),
                    v.mapped_chunks * v.row.chunk_size,
                    &crate::daemon::volumes::target_name(&config, &v.row.name),
                )?;
            }
        }
        VolumeCommand::Delete { name } => {
            volumes::delete(&catalog, &name).map_err(usage)?;
            writeln!(out, "deleted volume {name}")?;
        }
        VolumeCommand::Import {
            image,
            name,
            format,
        } => import(&config, &catalog, &image, &name, format, &mut out)?,
        VolumeCommand::Export {
            volume,
            file,
            format,
            snapshot: Some(snapshot),
        } => export_snapshot(config, &volume, &snapshot, &file, format, &mut out)?,
        VolumeCommand::Export {
            volume,
            file,
            format,
            snapshot: None,
        } => export(config, &catalog, &volume, &file, format, &mut out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn import(
    config: &Config,
    catalog: &Catalog,
    image_path: &Path,
    name: &str,
    format: ImageFormatArg,
    out: &mut impl Write,
) -> Result<()> {
    if !image_path.exists() {
        return Err(UsageError(format!("image {} does not exist", image_path.display())).into());
    }
    // Name, duplicates and the volume count, before any conversion or upload (the size is
    // checked once the image's is known).
    volumes::check_new(catalog, name, CHUNK_SIZE).map_err(usage)?;
    let rt = crate::cli::runtime()?;
    let engine = rt.block_on(Engine::open(config.clone()))?;
    let mut bar = Bar::new();
    let raw = image::prepare_import(
        image_path,
        image_format(format),
        &config.staging_dir(),
        &mut bar,
    )
    .map_err(image_error)?;
    if let Some(backing) = &raw.backing_file {
        // Worth a line: the volume gets data from a file the operator did not name.
        eprintln!(
            "{} is an overlay on {backing}; importing the whole disk they make",
            image_path.display()
        );
    }
    let imported = rt
        .block_on(image::import_raw(
            &engine.catalog,
            &engine.chunks,
            &raw,
            name,
            &mut bar,
        ))
        .map_err(image_error)?;
    bar.finish();
    writeln!(
        out,
        "imported {} ({}, {}) as volume {} ({}, {} chunks with data), target {}",
        image_path.display(),
        raw.format,
        ByteSize(raw.virtual_size),
        imported.row.name,
        ByteSize(imported.row.size_bytes),
        imported.stored_chunks,
        daemon::volumes::target_name(config, &imported.row.name)
    )?;
    Ok(())
}

fn export(
    config: Config,
    catalog: &Catalog,
    name: &str,
    file: &Path,
    format: ImageFormatArg,
    out: &mut impl Write,
) -> Result<()> {
    const RUNNING: &str = "a running daemon may hold data not yet uploaded: stop it, or export \
                           a snapshot";
    if let Some(ready) = daemon::Ready::read(&config) {
        anyhow::bail!("the daemon (pid {}) is running; {RUNNING}", ready.pid);
    }
    let row = catalog
        .volume_by_name(name)?
        .ok_or_else(|| UsageError(format!("no volume named {name}")))?;
    if row.mode != VolumeMode::Cached {
        return Err(UsageError(format!(
            "volume {name} is a {} volume: its data is in {}, which qemu-img can convert \
             directly while the daemon is stopped",
            row.mode.as_str(),
            row.local_path.as_deref().unwrap_or("its local file")
        ))
        .into());
    }
    let format = image_format(format).unwrap_or_else(|| by_extension(file));
    let staging_dir = config.staging_dir();
    let rt = crate::cli::runtime()?;
    let mut bar = Bar::new();
    let exported = rt.block_on(async {
        // Takes the daemon's lock until the end, so no daemon starts and writes while the
        // volume is read out, and uploads what the upload buffer still holds.
        let quiet = daemon::offline::quiesce(config)
            .await
            .map_err(|e| match e {
                daemon::DaemonError::AlreadyRunning { pid, .. } => {
                    anyhow::anyhow!("a daemon (pid {pid}) is starting; {RUNNING}")
                }
                other => other.into(),
            })?;
        let map = quiet.engine.catalog.chunk_map(row.id)?;
        let contents = image::Contents {
            size_bytes: row.size_bytes,
            map: &map,
        };
        export_to(
            &quiet.engine,
            contents,
            file,
            format,
            &staging_dir,
            &mut bar,
        )
        .await
    })?;
    bar.finish();
    writeln!(
        out,
        "exported volume {} ({}, {} chunks with data) to {} ({})",
        row.name,
        ByteSize(exported.size_bytes),
        exported.fetched_chunks,
        file.display(),
        format.as_str()
    )?;
    Ok(())
}

async fn export_to(
    engine: &Engine,
    contents: image::Contents<'_>,
    file: &Path,
    format: ImageFormat,
    staging_dir: &Path,
    bar: &mut Bar,
) -> Result<image::Exported> {
    image::export(
        &engine.catalog,
        &engine.chunks,
        contents,
        file,
        format,
        staging_dir,
        bar,
    )
    .await
    .map_err(image_error)
}

/// A snapshot's content, read from its manifest: consistent, and the daemon may keep running.
fn export_snapshot(
    config: Config,
    volume: &str,
    snapshot: &str,
    file: &Path,
    format: ImageFormatArg,
    out: &mut impl Write,
) -> Result<()> {
    let format = image_format(format).unwrap_or_else(|| by_extension(file));
    let staging_dir = config.staging_dir();
    let rt = crate::cli::runtime()?;
    let mut bar = Bar::new();
    let exported = rt.block_on(async {
        let engine = Engine::open(config).await?;
        let m = crate::gateway::volumes::manifest::read(&engine.chunks, snapshot)
            .await
            .map_err(usage)?;
        if m.header.volume_name != volume {
            return Err(UsageError(format!(
                "snapshot {snapshot} is of volume {}, not {volume}",
                m.header.volume_name
            ))
            .into());
        }
        let contents = image::Contents {
            size_bytes: m.header.size_bytes,
            map: &m.map,
        };
        export_to(&engine, contents, file, format, &staging_dir, &mut bar).await
    })?;
    bar.finish();
    writeln!(
        out,
        "exported snapshot {snapshot} of volume {volume} ({}, {} chunks with data) to {} ({})",
        ByteSize(exported.size_bytes),
        exported.fetched_chunks,
        file.display(),
        format.as_str()
    )?;
    Ok(())
}

fn image_format(arg: ImageFormatArg) -> Option<ImageFormat> {
    match arg {
        ImageFormatArg::Auto => None,
        ImageFormatArg::Raw => Some(ImageFormat::Raw),
        ImageFormatArg::Qcow2 => Some(ImageFormat::Qcow2),
        ImageFormatArg::Vmdk => Some(ImageFormat::Vmdk),
    }
}

fn by_extension(file: &Path) -> ImageFormat {
    match file.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => ImageFormat::Qcow2,
        Some("vmdk") => ImageFormat::Vmdk,
        _ => ImageFormat::Raw,
    }
}

fn image_error(e: ImageError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}
