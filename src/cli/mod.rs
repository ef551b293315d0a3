//! The binary's edge below `main`: turns the typed command line into a `Config` and calls the
//! daemon or a command. anyhow is allowed here and in `main.rs` only (CONTRIBUTING.md, "Errors").

pub mod args;
mod client;
mod commands;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{Config, defaults};
pub use args::Cli;
use args::Command;

/// Marks an error as a usage/config problem: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Gateway errors that come from the operator's input (bad names or sizes, duplicates, unknown
/// or busy objects) exit with status 2; the rest are runtime failures.
pub(crate) fn gateway_error(e: crate::gateway::GatewayError) -> anyhow::Error {
    use crate::gateway::GatewayError as E;
    match e {
        E::InvalidArgument(_) | E::AlreadyExists(_) | E::NotFound(_) | E::Busy(_) => {
            UsageError(e.to_string()).into()
        }
        other => other.into(),
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let data_dir = data_dir(&cli)?;
    match cli.command {
        Command::Treehash { files } => commands::treehash::run(&files),
        Command::Bench { what } => commands::bench::run(what),
        Command::Activate(args) => commands::activate::run(*args, cli.config.as_deref(), &data_dir),
        Command::Serve {
            iscsi_listen,
            api_listen,
            nfs_listen,
            rpcbind,
            fuse,
        } => {
            let config = load_config(cli.config.as_deref(), &data_dir)?;
            let listen = Listen {
                iscsi: iscsi_listen,
                api: api_listen,
                nfs: nfs_listen,
                rpcbind,
            };
            serve(config, listen, fuse)
        }
        Command::Mount {
            share,
            dir,
            nfs_listen,
            rpcbind,
            iscsi_listen,
            api_listen,
        } => {
            let config = load_config(cli.config.as_deref(), &data_dir)?;
            let listen = Listen {
                iscsi: iscsi_listen,
                api: api_listen,
                nfs: nfs_listen,
                rpcbind,
            };
            serve(config, listen, vec![(share, dir)])
        }
        Command::Status => commands::status::run(load_config(cli.config.as_deref(), &data_dir)?),
        Command::Scrub => commands::scrub::run(load_config(cli.config.as_deref(), &data_dir)?),
        Command::Volume(cmd) => {
            commands::volume::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
        Command::Snapshot(cmd) => {
            commands::snapshot::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
        Command::Gc { dry_run, grace } => commands::gc::run(
            load_config(cli.config.as_deref(), &data_dir)?,
            dry_run,
            grace,
        ),
        Command::Recover(args) => commands::recover::run(*args, cli.config.as_deref(), &data_dir),
        Command::Share(cmd) => {
            commands::share::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
        Command::Tape(cmd) => {
            commands::tape::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
        Command::Chunk(cmd) => {
            commands::chunk::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
        Command::Job(cmd) => {
            commands::job::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
        Command::Device(cmd) => {
            commands::device::run(cmd, load_config(cli.config.as_deref(), &data_dir)?)
        }
    }
}

/// The listener overrides of `serve` and `mount`.
struct Listen {
    iscsi: Option<std::net::SocketAddr>,
    api: Option<std::net::SocketAddr>,
    nfs: Option<std::net::SocketAddr>,
    rpcbind: Option<String>,
}

/// `serve` with the command line's overrides applied.
fn serve(mut config: Config, listen: Listen, fuse: Vec<(String, PathBuf)>) -> Result<ExitCode> {
    if let Some(addr) = listen.iscsi {
        config.iscsi.listen = addr;
    }
    if let Some(addr) = listen.api {
        config.api.listen = addr;
    }
    if let Some(addr) = listen.nfs {
        config.nfs.listen = addr;
        // The embedded default's rpcbind follows the NFS address it points at.
        if let crate::config::Rpcbind::BestEffort(at) = config.nfs.rpcbind {
            config.nfs.rpcbind =
                crate::config::Rpcbind::BestEffort(std::net::SocketAddr::new(addr.ip(), at.port()));
        }
    }
    if let Some(v) = listen.rpcbind {
        config.nfs.rpcbind = crate::config::Rpcbind::parse(&v, config.nfs.listen)
            .ok_or_else(|| UsageError(format!("--rpcbind {v:?}: not on, off or IP:PORT")))?;
    }
    for (share, dir) in fuse {
        let dir = std::path::absolute(&dir)?;
        config.fuse_mounts.push((share, dir));
    }
    commands::serve::run(config)
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    Ok(match &cli.data_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => defaults::data_dir(
            std::env::var_os("XDG_DATA_HOME").as_deref().map(Path::new),
            &cwd,
        ),
    })
}

/// `--config` (which must exist), else `DATA_DIR/tidegate.toml` if present, else the embedded
/// default.
fn load_config(explicit: Option<&Path>, data_dir: &Path) -> Result<Config> {
    let path = match explicit {
        Some(p) if !p.exists() => {
            return Err(UsageError(format!("config file {} does not exist", p.display())).into());
        }
        Some(p) => Some(p.to_path_buf()),
        None => Some(data_dir.join(defaults::CONFIG_FILE)).filter(|p| p.exists()),
    };
    Ok(match path {
        Some(p) => Config::load(&p, data_dir)?,
        None => Config::embedded(data_dir)?,
    })
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
