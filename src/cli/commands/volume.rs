//! `tidegate volume create|list|delete|import|export`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::catalog::Catalog;
use crate::catalog::volumes::VolumeMode;
use crate::cli::args::{ImageFormatArg, VolumeCommand, VolumeModeArg};
use crate::cli::client::Session;
use crate::cli::progress::Bar;
use crate::cli::{UsageError, gateway_error as usage};
use crate::config::{ByteSize, Config};
use crate::daemon::{self, Engine};
use crate::frontend::api::types::{CreateVolume, Size};
use crate::gateway::volumes::image::{self, ImageError, ImageFormat};
use crate::gateway::volumes::{self, CHUNK_SIZE};

pub fn run(cmd: VolumeCommand, config: Config) -> Result<ExitCode> {
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
            let req = CreateVolume {
                name,
                size: size.map(|s| Size::Bytes(s.bytes())),
                mode: Some(volume_mode(mode).as_str().to_owned()),
                local_path,
                from_snapshot,
                preserve_existing,
            };
            let v = Session::open(&config)?.run(|m| m.create_volume(req))?;
            writeln!(
                out,
                "created volume {} ({}, {}), target {}",
                v.name,
                ByteSize(v.size_bytes),
                v.mode,
                v.target
            )?;
        }
        VolumeCommand::List => {
            let all = Session::open(&config)?.run(|m| m.volumes())?;
            writeln!(
                out,
                "{:<20} {:>10} {:>7} {:>12}  TARGET",
                "NAME", "SIZE", "MODE", "IN BUCKET"
            )?;
            for v in all {
                writeln!(
                    out,
                    "{:<20} {:>10} {:>7} {:>12}  {}",
                    v.name,
                    ByteSize(v.size_bytes).to_string(),
                    v.mode,
                    ByteSize(v.in_bucket_bytes).to_string(),
                    v.target
                )?;
            }
        }
        VolumeCommand::Delete { name } => {
            Session::open(&config)?.run(|m| m.delete_volume(name.clone()))?;
            writeln!(out, "deleted volume {name}")?;
        }
        // Image import and export need the local disks: never through the API.
        VolumeCommand::Import {
            image,
            name,
            format,
        } => import(
            &config,
            &open_catalog(&config)?,
            &image,
            &name,
            format,
            &mut out,
        )?,
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
        } => {
            let catalog = open_catalog(&config)?;
            export(config, &catalog, &volume, &file, format, &mut out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn volume_mode(mode: VolumeModeArg) -> VolumeMode {
    match mode {
        VolumeModeArg::Cached => VolumeMode::Cached,
        VolumeModeArg::Stored => VolumeMode::Stored,
    }
}

fn open_catalog(config: &Config) -> Result<Catalog> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    Ok(Catalog::open(&config.catalog_path())?)
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
