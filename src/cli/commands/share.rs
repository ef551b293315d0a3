//! `tidegate share create|list|delete|refresh|status`, through the management operations (the
//! running daemon's API, which the NFS server sees on its next call without a restart, or
//! in-process on the catalog with no daemon).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::catalog::shares::Squash;
use crate::cli::args::{ShareCommand, SquashArg};
use crate::cli::client::Session;
use crate::cli::gateway_error as usage;
use crate::config::{ByteSize, Config};
use crate::frontend::api::types::{CreateShare, Mode, RefreshShare};
use crate::gateway::GatewayError;

fn squash(arg: SquashArg) -> Squash {
    match arg {
        SquashArg::Root => Squash::Root,
        SquashArg::All => Squash::All,
        SquashArg::None => Squash::None,
    }
}

pub fn run(cmd: ShareCommand, config: Config) -> Result<ExitCode> {
    let session = Session::open(&config)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ShareCommand::Create(a) => {
            let req = CreateShare {
                name: a.name,
                prefix: a.bucket_prefix,
                read_only: a.read_only,
                squash: Some(squash(a.squash).as_str().to_owned()),
                allowed_clients: Some(a.allowed_clients),
                default_uid: Some(a.default_uid),
                default_gid: Some(a.default_gid),
                default_mode: Some(Mode::Number(a.default_mode)),
                default_dir_mode: Some(Mode::Number(a.default_dir_mode)),
                refresh_secs: Some(a.refresh_secs),
            };
            let s = session.run(|m| m.create_share(req))?;
            writeln!(
                out,
                "created share {}: objects under {} in {}, NFS export /{}",
                s.name, s.prefix, config.bucket.location, s.name
            )?;
        }
        ShareCommand::List => {
            let all = session.run(|m| m.shares())?;
            writeln!(
                out,
                "{:<16} {:<28} {:>4} {:>6} {:>8}  CLIENTS",
                "NAME", "PREFIX", "MODE", "SQUASH", "REFRESH"
            )?;
            for s in all {
                let clients = s.allowed_clients.join(",");
                writeln!(
                    out,
                    "{:<16} {:<28} {:>4} {:>6} {:>7}s  {}",
                    s.name,
                    s.prefix,
                    if s.read_only { "ro" } else { "rw" },
                    s.squash,
                    s.refresh_secs,
                    if clients.is_empty() { "any" } else { &clients }
                )?;
            }
        }
        ShareCommand::Delete { name, force } => {
            session.run(|m| m.delete_share(name.clone(), force))?;
            writeln!(out, "deleted share {name} (its objects stay in the bucket)")?;
        }
        ShareCommand::Refresh { name, path } => {
            let r = session.run(|m| m.refresh_share(name, RefreshShare { path }))?;
            writeln!(
                out,
                "share {}: {} directories will be re-listed from the bucket on next access",
                r.share, r.directories
            )?;
        }
        ShareCommand::Status { name } => {
            let s = session
                .run(|m| m.shares())?
                .into_iter()
                .find(|s| s.name == name)
                .ok_or_else(|| usage(GatewayError::NotFound(format!("share {name}"))))?;
            writeln!(out, "share {}", s.name)?;
            writeln!(out, "dirty files: {}", s.dirty_files)?;
            writeln!(
                out,
                "dirty bytes: {} ({})",
                s.dirty_bytes,
                ByteSize(s.dirty_bytes)
            )?;
            writeln!(out, "pending deletes: {}", s.pending_deletes)?;
            match s.last_upload_unix {
                Some(t) => writeln!(out, "last upload: {}", crate::store::rfc3339(t))?,
                None => writeln!(out, "last upload: never")?,
            }
            if s.in_bucket {
                writeln!(
                    out,
                    "in the bucket: yes, every file written so far is safely there"
                )?;
            } else {
                writeln!(
                    out,
                    "in the bucket: not yet, {} files ({}) and {} deletions to go",
                    s.dirty_files,
                    ByteSize(s.dirty_bytes),
                    s.pending_deletes
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
