//! `tidegate volume create|list|delete`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::catalog::Catalog;
use crate::catalog::volumes::VolumeMode;
use crate::cli::UsageError;
use crate::cli::args::{VolumeCommand, VolumeModeArg};
use crate::config::{ByteSize, Config};
use crate::gateway::GatewayError;
use crate::gateway::volumes::{self, CreateVolume};

pub fn run(cmd: VolumeCommand, config: Config) -> Result<ExitCode> {
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
            let mode = match mode {
                VolumeModeArg::Cached => VolumeMode::Cached,
                VolumeModeArg::Stored => VolumeMode::Stored,
            };
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
            writeln!(
                out,
                "{:<20} {:>10} {:>7} {:>12}  TARGET",
                "NAME", "SIZE", "MODE", "IN BUCKET"
            )?;
            for v in volumes::list(&catalog)? {
                writeln!(
                    out,
                    "{:<20} {:>10} {:>7} {:>12}  {}",
                    v.row.name,
                    ByteSize(v.row.size_bytes).to_string(),
                    v.row.mode.as_str(),
                    ByteSize(v.mapped_chunks * v.row.chunk_size).to_string(),
                    crate::daemon::volumes::target_name(&config, &v.row.name)
                )?;
            }
        }
        VolumeCommand::Delete { name } => {
            volumes::delete(&catalog, &name).map_err(usage)?;
            writeln!(out, "deleted volume {name}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Bad names, sizes and duplicates are the operator's input: exit status 2.
fn usage(e: GatewayError) -> anyhow::Error {
    match e {
        GatewayError::InvalidArgument(_)
        | GatewayError::AlreadyExists(_)
        | GatewayError::NotFound(_) => UsageError(e.to_string()).into(),
        other => other.into(),
    }
}
