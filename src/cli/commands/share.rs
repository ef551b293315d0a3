//! `tidegate share create|list|delete|refresh|status`: through a running daemon's API (catalog
//! operations it sees on the next NFS call, without a restart), or on the catalog directly.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::catalog::shares::Squash;
use crate::cli::args::{ShareCommand, SquashArg};
use crate::cli::daemon_api::{DaemonApi, items, route, segment};
use crate::cli::gateway_error as usage;
use crate::config::{ByteSize, Config};
use crate::gateway::files::{self, Cidr, ShareSpec};

pub fn run(cmd: ShareCommand, config: Config) -> Result<ExitCode> {
    route(config, cmd, through_api, local)
}

/// Create, list, delete and refresh through a running daemon's API; `status` reads the catalog.
fn through_api(
    api: &DaemonApi,
    config: &Config,
    cmd: ShareCommand,
    out: &mut impl Write,
) -> Result<Option<ShareCommand>> {
    match cmd {
        ShareCommand::Create(a) => {
            let row = api.post(
                "/shares",
                json!({
                    "name": a.name,
                    "prefix": a.bucket_prefix,
                    "read_only": a.read_only,
                    "squash": squash(a.squash).as_str(),
                    "allowed_clients": a.allowed_clients
                        .iter()
                        .filter(|c| !c.trim().is_empty())
                        .collect::<Vec<_>>(),
                    "default_uid": a.default_uid,
                    "default_gid": a.default_gid,
                    "default_mode": a.default_mode,
                    "default_dir_mode": a.default_dir_mode,
                    "refresh_secs": a.refresh_secs,
                }),
            )?;
            let name = row["name"].as_str().unwrap_or("?");
            created(out, name, row["prefix"].as_str().unwrap_or("?"), config)?;
        }
        ShareCommand::List => {
            list_header(out)?;
            let all = api.get("/shares")?;
            for s in items(&all) {
                let clients: Vec<&str> = items(&s["allowed_clients"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                list_line(
                    out,
                    s["name"].as_str().unwrap_or("?"),
                    s["prefix"].as_str().unwrap_or("?"),
                    s["read_only"].as_bool().unwrap_or(false),
                    s["squash"].as_str().unwrap_or("?"),
                    s["refresh_secs"].as_u64().unwrap_or(0),
                    &clients.join(","),
                )?;
            }
        }
        ShareCommand::Delete { name, force } => {
            let force = if force { "?force=true" } else { "" };
            api.delete(&format!("/shares/{}{force}", segment(&name)))?;
            deleted(out, &name)?;
        }
        ShareCommand::Refresh { name, path } => {
            let r = api.post(
                &format!("/shares/{}/refresh", segment(&name)),
                json!({ "path": path }),
            )?;
            refreshed(out, &name, r["directories"].as_u64().unwrap_or(0))?;
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

fn squash(arg: SquashArg) -> Squash {
    match arg {
        SquashArg::Root => Squash::Root,
        SquashArg::All => Squash::All,
        SquashArg::None => Squash::None,
    }
}

fn created(out: &mut impl Write, name: &str, prefix: &str, config: &Config) -> Result<()> {
    writeln!(
        out,
        "created share {name}: objects under {prefix} in {}, NFS export /{name}",
        config.bucket.location
    )?;
    Ok(())
}

fn deleted(out: &mut impl Write, name: &str) -> Result<()> {
    writeln!(out, "deleted share {name} (its objects stay in the bucket)")?;
    Ok(())
}

fn refreshed(out: &mut impl Write, name: &str, directories: u64) -> Result<()> {
    writeln!(
        out,
        "share {name}: {directories} directories will be re-listed from the bucket on next access"
    )?;
    Ok(())
}

fn list_header(out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "{:<16} {:<28} {:>4} {:>6} {:>8}  CLIENTS",
        "NAME", "PREFIX", "MODE", "SQUASH", "REFRESH"
    )?;
    Ok(())
}

fn list_line(
    out: &mut impl Write,
    name: &str,
    prefix: &str,
    read_only: bool,
    squash: &str,
    refresh_secs: u64,
    clients: &str,
) -> Result<()> {
    writeln!(
        out,
        "{:<16} {:<28} {:>4} {:>6} {:>7}s  {}",
        name,
        prefix,
        if read_only { "ro" } else { "rw" },
        squash,
        refresh_secs,
        if clients.is_empty() { "any" } else { clients }
    )?;
    Ok(())
}

/// The same commands on the catalog, with no daemon running.
fn local(cmd: ShareCommand, config: Config) -> Result<ExitCode> {
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
                squash: squash(a.squash),
                allowed_clients,
                default_uid: a.default_uid,
                default_gid: a.default_gid,
                default_file_mode: a.default_mode,
                default_dir_mode: a.default_dir_mode,
                refresh: Duration::from_secs(a.refresh_secs),
            };
            let row = files::create_share(&catalog, &spec).map_err(usage)?;
            created(&mut out, &row.name, &row.bucket_prefix, &config)?;
        }
        ShareCommand::List => {
            list_header(&mut out)?;
            for s in files::list_shares(&catalog)? {
                list_line(
                    &mut out,
                    &s.name,
                    &s.bucket_prefix,
                    s.read_only,
                    s.squash.as_str(),
                    s.refresh_secs,
                    &s.allowed_clients,
                )?;
            }
        }
        ShareCommand::Delete { name, force } => {
            files::delete_share(&catalog, &name, force).map_err(usage)?;
            deleted(&mut out, &name)?;
        }
        ShareCommand::Refresh { name, path } => {
            let n = files::request_refresh(&catalog, &name, path.as_deref().unwrap_or(""))
                .map_err(usage)?;
            refreshed(&mut out, &name, n)?;
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
