//! `tidegate snapshot create|list|delete|schedule`, through the management operations (the
//! running daemon's API, or in-process with none).
//!
//! With a daemon running, `create` queues the request and waits for the daemon to commit it;
//! with none, the request is taken before it is answered: the gateway quiesced (upload buffer
//! drained) and the catalog's chunk map, which then holds every acknowledged write, cut.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::cli::args::SnapshotCommand;
use crate::cli::client::Session;
use crate::config::{ByteSize, Config};
use crate::frontend::api::types::{CreateSnapshot, SetSchedule, Snapshot};

/// How often a waiting `create` looks at the snapshot's state.
const POLL: Duration = Duration::from_millis(100);

/// Still being taken (requested, staging or uploading).
fn in_flight(s: &Snapshot) -> bool {
    !matches!(s.state.as_str(), "complete" | "failed")
}

pub fn run(cmd: SnapshotCommand, config: Config) -> Result<ExitCode> {
    let session = Session::open(&config)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        SnapshotCommand::Create {
            volume,
            description,
            no_wait,
        } => {
            let requested = session.run(|m| {
                m.create_snapshot(CreateSnapshot {
                    volume,
                    description,
                })
            })?;
            if no_wait {
                writeln!(out, "{}", requested.id)?;
                return Ok(ExitCode::SUCCESS);
            }
            let done = wait(&session, requested)?;
            if done.state != "complete" {
                bail!(
                    "snapshot {} of {} failed: {}",
                    done.id,
                    done.volume,
                    done.error.as_deref().unwrap_or("unknown reason")
                );
            }
            writeln!(
                out,
                "{} of volume {}: {} chunks with data, {} new since the previous snapshot, {} uploaded by the snapshot",
                done.id,
                done.volume,
                done.chunks,
                done.new_chunks,
                ByteSize(done.uploaded_bytes)
            )?;
        }
        SnapshotCommand::List { volume } => {
            let all = session.run(|m| m.snapshots())?;
            writeln!(
                out,
                "{:<22} {:<16} {:>10} {:<9} {:>7} {:>7}  {:<20} DESCRIPTION",
                "ID", "VOLUME", "SIZE", "STATE", "CHUNKS", "NEW", "TAKEN (UTC)"
            )?;
            for s in all
                .iter()
                .filter(|s| volume.as_ref().is_none_or(|v| *v == s.volume))
            {
                writeln!(
                    out,
                    "{:<22} {:<16} {:>10} {:<9} {:>7} {:>7}  {:<20} {}{}",
                    s.id,
                    s.volume,
                    ByteSize(s.size_bytes).to_string(),
                    s.state,
                    s.chunks,
                    s.new_chunks,
                    crate::store::rfc3339(s.requested_unix),
                    if s.scheduled { "[scheduled] " } else { "" },
                    match (&s.error, s.state.as_str()) {
                        (Some(e), "failed") => format!("{} ({e})", s.description),
                        _ => s.description.clone(),
                    }
                )?;
            }
        }
        SnapshotCommand::Delete { snapshot: id } => {
            session.run(|m| m.delete_snapshot(id.clone()))?;
            writeln!(out, "deleted snapshot {id}")?;
        }
        SnapshotCommand::Schedule {
            volume,
            every,
            keep,
            off,
        } => {
            let req = SetSchedule {
                every_secs: every.map_or(0, |d| d.as_secs()),
                keep,
                off,
            };
            let s = session.run(|m| m.set_schedule(volume, req))?;
            match (s.every_secs, s.keep) {
                (Some(every), Some(keep)) => writeln!(
                    out,
                    "volume {}: a snapshot every {every} s, keeping the newest {keep} \
                     (taken by the running daemon)",
                    s.volume
                )?,
                _ => writeln!(out, "volume {}: no scheduled snapshots", s.volume)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for the snapshot to be taken, reporting each state on stderr.
fn wait(session: &Session, requested: Snapshot) -> Result<Snapshot> {
    let id = requested.id.clone();
    let mut current = requested;
    let mut shown = None;
    loop {
        if shown.as_ref() != Some(&current.state) {
            eprintln!("{id}: {}", current.state);
            shown = Some(current.state.clone());
        }
        if !in_flight(&current) {
            return Ok(current);
        }
        std::thread::sleep(POLL);
        current = session
            .run(|m| m.snapshots())?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| anyhow::anyhow!("snapshot {id} vanished from the catalog"))?;
    }
}
