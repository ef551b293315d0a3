//! `tidegate recover`: a lost gateway back on a fresh data dir, from its bucket and key file.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::args::{ActivateArgs, RecoverArgs};
use crate::cli::commands::activate::{config_path, config_text};
use crate::config::ByteSize;

pub fn run(args: RecoverArgs, config: Option<&Path>, data_dir: &Path) -> Result<ExitCode> {
    let config_path = config_path(config, data_dir);
    let gateway_id = args.gateway_id.clone();
    let text = config_text(
        ActivateArgs {
            bucket: args.bucket,
            key_file: Some(args.key_file),
            cache_path: None,
            cache_size: None,
            upload_buffer_path: None,
            upload_buffer_size: None,
            upload_limit: None,
            download_limit: None,
        },
        data_dir,
        "recover",
    )?;
    let rt = crate::cli::runtime()?;
    let r = rt.block_on(crate::daemon::recover::recover(
        &text,
        &config_path,
        data_dir,
        gateway_id.as_deref(),
    ))?;
    let mut out = std::io::stdout().lock();
    match r.catalog_generation {
        Some(g) => writeln!(
            out,
            "recovered gateway {} from its catalog copy of {}",
            r.gateway_id,
            crate::store::rfc3339(i64::try_from(g / 1000).unwrap_or(0))
        )?,
        None => writeln!(
            out,
            "no catalog copy in the bucket: volumes recreated from their newest snapshots"
        )?,
    }
    writeln!(out, "volumes ({}):", r.volumes.len())?;
    for v in &r.volumes {
        writeln!(
            out,
            "  {:<20} {:>10} {}",
            v.name,
            ByteSize(v.size_bytes).to_string(),
            v.mode.as_str()
        )?;
    }
    for name in &r.converted {
        writeln!(
            out,
            "  {name}: a stored volume whose local disk is not here; recovered as a cached volume"
        )?;
    }
    if !r.reverted_files.is_empty() {
        writeln!(
            out,
            "share files with writes not uploaded when the catalog copy was taken ({}):",
            r.reverted_files.len()
        )?;
        for f in &r.reverted_files {
            let now = if f.uploaded {
                "back to its uploaded version"
            } else {
                "never uploaded: now empty"
            };
            writeln!(out, "  {}/{}: {now}", f.share, f.path)?;
        }
    }
    writeln!(
        out,
        "snapshots ({}, {} found only in the bucket):",
        r.snapshots.len(),
        r.adopted
    )?;
    for s in &r.snapshots {
        writeln!(
            out,
            "  {:<22} {:<20} {}",
            s.id,
            s.volume_name,
            s.state.as_str()
        )?;
    }
    writeln!(
        out,
        "config written to {}; start with `tidegate serve`",
        config_path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}
