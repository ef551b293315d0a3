//! `tidegate share create|list|delete|refresh|status`: catalog operations; a running daemon
//! sees them on the next NFS call (exports, refresh) without a restart.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::catalog::Catalog;
use crate::catalog::shares::Squash;
use crate::cli::args::{ShareCommand, SquashArg};
use crate::cli::gateway_error as usage;
use crate::config::{ByteSize, Config};
use crate::gateway::files::{self, Cidr, ShareSpec};

pub fn run(cmd: ShareCommand, config: Config) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Catalog::open(&config.catalog_path())?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ShareCommand::Create(a) => {
            let allowed_clients = a
                .allowed_clients
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| Cidr::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(usage)?;
            let spec = ShareSpec {
                name: a.name,
                bucket_prefix: a.bucket_prefix,
                read_only: a.read_only,
                squash: match a.squash {
                    SquashArg::Root => Squash::Root,
                    SquashArg::All => Squash::All,
                    SquashArg::None => Squash::None,
                },
                allowed_clients,
                default_uid: a.default_uid,
                default_gid: a.default_gid,
                default_file_mode: a.default_mode,
                default_dir_mode: a.default_dir_mode,
                refresh: Duration::from_secs(a.refresh_secs),
            };
            let row = files::create_share(&catalog, &spec).map_err(usage)?;
            writeln!(
                out,
                "created share {}: objects under {} in {}, NFS export /{}",
                row.name, row.bucket_prefix, config.bucket.location, row.name
            )?;
        }
        ShareCommand::List => {
            writeln!(
                out,
                "{:<16} {:<28} {:>4} {:>6} {:>8}  CLIENTS",
                "NAME", "PREFIX", "MODE", "SQUASH", "REFRESH"
            )?;
            for s in files::list_shares(&catalog)? {
                writeln!(
                    out,
                    "{:<16} {:<28} {:>4} {:>6} {:>7}s  {}",
                    s.name,
                    s.bucket_prefix,
                    if s.read_only { "ro" } else { "rw" },
                    s.squash.as_str(),
                    s.refresh_secs,
                    if s.allowed_clients.is_empty() {
                        "any"
                    } else {
                        &s.allowed_clients
                    }
                )?;
            }
        }
        ShareCommand::Delete { name, force } => {
            files::delete_share(&catalog, &name, force).map_err(usage)?;
            writeln!(out, "deleted share {name} (its objects stay in the bucket)")?;
        }
        ShareCommand::Refresh { name, path } => {
            let n = files::request_refresh(&catalog, &name, path.as_deref().unwrap_or(""))
                .map_err(usage)?;
            writeln!(
                out,
                "share {name}: {n} directories will be re-listed from the bucket on next access"
            )?;
        }
        ShareCommand::Status { name } => {
            let (share, stats) = files::share_status(&catalog, &name).map_err(usage)?;
            writeln!(out, "share {}", share.name)?;
            writeln!(out, "dirty files: {}", stats.dirty_files)?;
            writeln!(
                out,
                "dirty bytes: {} ({})",
                stats.dirty_bytes,
                ByteSize(stats.dirty_bytes)
            )?;
            writeln!(out, "pending deletes: {}", stats.pending_deletes)?;
            match stats.last_upload_unix {
                Some(t) => writeln!(out, "last upload: {}", crate::store::rfc3339(t))?,
                None => writeln!(out, "last upload: never")?,
            }
            if stats.dirty_files == 0 && stats.pending_deletes == 0 {
                writeln!(
                    out,
                    "in the bucket: yes, every file written so far is safely there"
                )?;
            } else {
                writeln!(
                    out,
                    "in the bucket: not yet, {} files ({}) and {} deletions to go",
                    stats.dirty_files,
                    ByteSize(stats.dirty_bytes),
                    stats.pending_deletes
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
