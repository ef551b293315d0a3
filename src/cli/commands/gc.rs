//! `tidegate gc [--dry-run] [--grace 24h]`: frees bucket chunks nothing references.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::config::{ByteSize, Config};
use crate::daemon::Engine;

pub fn run(config: Config, dry_run: bool, grace: Duration) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    let engine = rt.block_on(Engine::open(config))?;
    let r = rt.block_on(crate::gateway::gc::collect(
        &engine.catalog,
        &engine.chunks,
        grace,
        dry_run,
    ))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "chunks in the bucket: {} ({} referenced, {} unreferenced but younger than {} s)",
        r.chunks_seen,
        r.chunks_live,
        r.chunks_young,
        grace.as_secs()
    )?;
    writeln!(
        out,
        "garbage: {} chunks ({}), {} objects of snapshots that never committed",
        r.garbage_chunks,
        ByteSize(r.garbage_bytes),
        r.orphan_objects
    )?;
    if dry_run {
        writeln!(out, "dry run: nothing deleted")?;
    } else {
        writeln!(
            out,
            "deleted: {} objects ({})",
            r.deleted,
            ByteSize(r.deleted_bytes)
        )?;
    }
    if let Some(why) = r.stopped {
        writeln!(out, "stopped early: {why}")?;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
