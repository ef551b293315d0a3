//! `tidegate tape create|list|show|delete|retrieve|verify`, through the management operations
//! (the running daemon's API, or in-process on the catalog with no daemon). `retrieve` asks
//! the daemon's shelf worker and follows its progress; `verify` reads the archive from the
//! bucket itself.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::catalog::tapes::LockMode;
use crate::cli::args::{LockArg, TapeCommand};
use crate::cli::client::Session;
use crate::cli::gateway_error as usage;
use crate::config::{ByteSize, Config};
use crate::daemon::Engine;
use crate::frontend::api::types::{CreateTapes, Size, Tape};
use crate::gateway::GatewayError;
use crate::gateway::tapes::{self, shelf};

/// How often `retrieve` looks at the daemon's progress.
const POLL: Duration = Duration::from_millis(200);

fn lock_mode(l: LockArg) -> LockMode {
    match l {
        LockArg::Governance => LockMode::Governance,
        LockArg::Compliance => LockMode::Compliance,
    }
}

/// The tape named `barcode` in a listing.
fn find(all: Vec<Tape>, barcode: &str) -> Result<Tape> {
    all.into_iter()
        .find(|t| t.barcode == barcode)
        .ok_or_else(|| usage(GatewayError::NotFound(format!("tape {barcode}"))))
}

pub fn run(cmd: TapeCommand, config: Config) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let session = || Session::open(&config);
    match cmd {
        TapeCommand::Create {
            barcode_prefix,
            count,
            size,
            retention_days,
            lock,
        } => {
            let req = CreateTapes {
                barcode_prefix,
                count: Some(count),
                size: Some(Size::Bytes(size.bytes())),
                retention_days,
                lock: lock.map(|l| lock_mode(l).as_str().to_owned()),
            };
            for t in session()?.run(|m| m.create_tapes(req))? {
                writeln!(
                    out,
                    "created tape {} ({}) in {}",
                    t.barcode,
                    ByteSize(t.size_bytes),
                    t.location_label
                )?;
            }
        }
        TapeCommand::List => {
            let all = session()?.run(|m| m.tapes())?;
            writeln!(
                out,
                "{:<16} {:<20} {:<20} {:>10} {:>12}  FLAGS",
                "BARCODE", "STATE", "LOCATION", "SIZE", "USED"
            )?;
            for t in all {
                writeln!(
                    out,
                    "{:<16} {:<20} {:<20} {:>10} {:>12}  {}",
                    t.barcode,
                    t.state_label,
                    t.location_label,
                    ByteSize(t.size_bytes).to_string(),
                    t.data_bytes,
                    flags(&t)
                )?;
            }
        }
        TapeCommand::Show { barcode } => {
            let t = find(session()?.run(|m| m.tapes())?, &barcode)?;
            writeln!(out, "barcode: {}", t.barcode)?;
            writeln!(out, "state: {}", t.state_label)?;
            writeln!(out, "location: {}", t.location_label)?;
            writeln!(out, "size_bytes: {}", t.size_bytes)?;
            writeln!(out, "data_bytes: {}", t.data_bytes)?;
            writeln!(out, "objects: {}", t.objects)?;
            writeln!(out, "read_only: {}", t.read_only)?;
            if let Some(h) = &t.tree_hash {
                writeln!(out, "tree_hash: {h}")?;
            }
            if let Some(until) = t.retention_until_unix {
                let lock = t.lock_mode.as_deref().unwrap_or("none");
                writeln!(out, "retention_until_unix: {until} ({lock})")?;
            }
            if let Some(e) = &t.error {
                writeln!(out, "error: {e}")?;
            }
        }
        TapeCommand::Delete {
            barcode,
            bypass_governance,
        } => {
            session()?.run(|m| m.delete_tape(barcode.clone(), bypass_governance))?;
            writeln!(out, "deleted tape {barcode}")?;
        }
        TapeCommand::Retrieve { barcode } => {
            let session = session()?;
            let mut t = session.run(|m| m.retrieve_tape(barcode.clone()))?;
            // Follow the shelf worker, showing its progress on stderr.
            let mut shown = 0;
            while t.state == "retrieving" {
                let progress = t.progress_bytes.unwrap_or(0);
                if progress != shown {
                    shown = progress;
                    eprintln!("retrieving {barcode}: {shown} of {} bytes", t.data_bytes);
                }
                std::thread::sleep(POLL);
                t = find(session.run(|m| m.tapes())?, &barcode)?;
            }
            if t.state != "retrieved" {
                match &t.error {
                    Some(e) => bail!("{e}"),
                    None => bail!("tape {barcode} is {}", t.state_label),
                }
            }
            writeln!(
                out,
                "retrieved tape {barcode} into {} (read-only)",
                t.location_label
            )?;
        }
        TapeCommand::Verify { barcode } => verify(config, &barcode, &mut out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the archive from the bucket and checks its tree hash: local, whether or not a daemon
/// runs (it only reads).
fn verify(config: Config, barcode: &str, out: &mut impl Write) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Catalog::open(&config.catalog_path())?;
    let t = tapes::find(&catalog, barcode).map_err(usage)?;
    if t.tree_hash.is_none() {
        bail!(crate::cli::UsageError(format!(
            "tape {barcode} has no archive to verify (it is {})",
            t.state.label()
        )));
    }
    let rt = crate::cli::runtime()?;
    let root = rt.block_on(async {
        let engine = Engine::open(config).await?;
        anyhow::Ok(shelf::verify(&engine.chunks, &t).await?)
    })?;
    writeln!(out, "tape {barcode}: archive verified, tree hash {root}")?;
    Ok(())
}

fn flags(t: &Tape) -> String {
    let mut f = Vec::new();
    if t.read_only {
        f.push("read-only".to_owned());
    }
    if let (Some(until), Some(lock)) = (t.retention_until_unix, &t.lock_mode) {
        f.push(format!("{lock} lock until {until}"));
    }
    f.join(", ")
}
