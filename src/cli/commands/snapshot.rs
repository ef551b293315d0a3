//! `tidegate snapshot create|list|delete|schedule`.
//!
//! With a daemon running, `create` queues the request and waits for the daemon to commit it;
//! with none, it quiesces the gateway itself (drains the upload buffer) and snapshots the
//! catalog's chunk map, which then holds every acknowledged write.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::catalog::snapshots::{SnapshotRow, SnapshotState};
use crate::cli::args::SnapshotCommand;
use crate::cli::daemon_api::{DaemonApi, segment};
use crate::cli::{UsageError, gateway_error as usage};
use crate::config::{ByteSize, Config};
use crate::daemon::{DaemonError, Engine};
use crate::gateway::volumes::snapshot::{self, Context as SnapContext, Cut};

pub fn run(cmd: SnapshotCommand, config: Config) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Catalog::open(&config.catalog_path())?;
    let rt = crate::cli::runtime()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        SnapshotCommand::Create {
            volume,
            description,
            no_wait,
        } => {
            let done = if let Some(api) = DaemonApi::running(&config)? {
                let requested = api.post(
                    "/snapshots",
                    serde_json::json!({ "volume": volume, "description": description }),
                )?;
                let id = requested["id"]
                    .as_str()
                    .context("the daemon's answer names no snapshot id")?;
                if no_wait {
                    writeln!(out, "{id}")?;
                    return Ok(ExitCode::SUCCESS);
                }
                rt.block_on(wait(&catalog, id))?
            } else {
                let row =
                    snapshot::request(&catalog, &volume, &description, false).map_err(usage)?;
                rt.block_on(take_offline(&catalog, config, &row))?
            };
            if done.state != SnapshotState::Complete {
                bail!(
                    "snapshot {} of {} failed: {}",
                    done.id,
                    done.volume_name,
                    done.error.as_deref().unwrap_or("unknown reason")
                );
            }
            writeln!(
                out,
                "{} of volume {}: {} chunks with data, {} new since the previous snapshot, {} uploaded by the snapshot",
                done.id,
                done.volume_name,
                done.chunks,
                done.new_chunks,
                ByteSize(done.uploaded_bytes)
            )?;
        }
        SnapshotCommand::List { volume } => {
            writeln!(
                out,
                "{:<22} {:<16} {:>10} {:<9} {:>7} {:>7}  {:<20} DESCRIPTION",
                "ID", "VOLUME", "SIZE", "STATE", "CHUNKS", "NEW", "TAKEN (UTC)"
            )?;
            for s in catalog.snapshots(volume.as_deref())? {
                writeln!(
                    out,
                    "{:<22} {:<16} {:>10} {:<9} {:>7} {:>7}  {:<20} {}{}",
                    s.id,
                    s.volume_name,
                    ByteSize(s.size_bytes).to_string(),
                    s.state.as_str(),
                    s.chunks,
                    s.new_chunks,
                    crate::store::rfc3339(s.requested_unix),
                    if s.scheduled { "[scheduled] " } else { "" },
                    match (&s.error, s.state) {
                        (Some(e), SnapshotState::Failed) => format!("{} ({e})", s.description),
                        _ => s.description.clone(),
                    }
                )?;
            }
        }
        SnapshotCommand::Delete { snapshot: id } => {
            if let Some(api) = DaemonApi::running(&config)? {
                api.delete(&format!("/snapshots/{}", segment(&id)))?;
                writeln!(out, "deleted snapshot {id}")?;
                return Ok(ExitCode::SUCCESS);
            }
            let engine = rt.block_on(Engine::open(config))?;
            rt.block_on(snapshot::delete(&engine.catalog, &engine.chunks, &id))
                .map_err(usage)?;
            writeln!(out, "deleted snapshot {id}")?;
        }
        SnapshotCommand::Schedule {
            volume,
            every,
            keep,
            off,
        } => {
            let row = catalog
                .volume_by_name(&volume)?
                .ok_or_else(|| UsageError(format!("no volume {volume}")))?;
            if off {
                catalog.remove_schedule(row.id)?;
                writeln!(out, "volume {volume}: no scheduled snapshots")?;
            } else {
                let every = every.map_or(0, |d| d.as_secs());
                if every < 60 {
                    return Err(UsageError("--every must be at least 1m".into()).into());
                }
                if keep == 0 {
                    return Err(UsageError("--keep must be at least 1".into()).into());
                }
                catalog.set_schedule(row.id, every, keep)?;
                writeln!(
                    out,
                    "volume {volume}: a snapshot every {every} s, keeping the newest {keep} \
                     (taken by the running daemon)"
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for the daemon to finish the snapshot, reporting each state on stderr.
async fn wait(catalog: &Catalog, id: &str) -> Result<SnapshotRow> {
    let mut shown = None;
    loop {
        let row = catalog
            .snapshot(id)?
            .with_context(|| format!("snapshot {id} vanished from the catalog"))?;
        if shown != Some(row.state) {
            eprintln!("{id}: {}", row.state.as_str());
            shown = Some(row.state);
        }
        if !row.state.in_flight() {
            return Ok(row);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn take_offline(catalog: &Catalog, config: Config, row: &SnapshotRow) -> Result<SnapshotRow> {
    let staging = config.staging_dir();
    let quiet = match crate::daemon::offline::quiesce(config).await {
        Ok(q) => q,
        // A daemon started meanwhile: it takes the request.
        Err(DaemonError::AlreadyRunning { .. }) => return wait(catalog, &row.id).await,
        Err(e) => return Err(e.into()),
    };
    let gateway_id = quiet
        .engine
        .catalog
        .setting(crate::catalog::settings::keys::GATEWAY_ID)?
        .unwrap_or_default();
    let ctx = SnapContext {
        catalog: &quiet.engine.catalog,
        chunks: &quiet.engine.chunks,
        gateway_id: &gateway_id,
        staging_dir: &staging,
    };
    // A stored volume's local changes are not in the bucket yet: cut it like the daemon does.
    let volume = quiet.engine.catalog.volume_by_id(row.volume_id)?;
    let stored = match volume {
        Some(v) if v.mode == crate::catalog::volumes::VolumeMode::Stored => {
            Some(crate::gateway::volumes::stored::StoredVolume::open(
                v,
                quiet.engine.catalog.clone(),
                quiet.engine.chunks.clone(),
            )?)
        }
        _ => None,
    };
    let cut = match &stored {
        Some(v) => Cut::Live(v),
        None => Cut::Quiescent,
    };
    let taken = snapshot::take(ctx, row, cut).await;
    if let Err(e) = &taken {
        tracing::debug!(error = %e, "snapshot failed");
    }
    if matches!(taken, Ok(false)) {
        return wait(catalog, &row.id).await;
    }
    catalog
        .snapshot(&row.id)?
        .with_context(|| format!("snapshot {} vanished from the catalog", row.id))
}
