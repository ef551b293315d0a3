//! `tidegate tape create|list|show|delete|retrieve|verify`: catalog operations a running
//! daemon sees at once (its library reads the catalog); `retrieve` asks the daemon's shelf
//! worker and follows its progress; `verify` reads the archive from the bucket itself.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::catalog::Catalog;
use crate::catalog::tapes::{ElementKind, LockMode, TapeRow, TapeState};
use crate::cli::args::{LockArg, TapeCommand};
use crate::cli::gateway_error as usage;
use crate::config::{ByteSize, Config};
use crate::daemon::{Engine, Ready, unix_now};
use crate::gateway::library::Element;
use crate::gateway::tapes::{self, CreateTapes, TapeLimits, shelf};

/// How often `retrieve` looks at the daemon's progress.
const POLL: Duration = Duration::from_millis(200);

pub fn run(cmd: TapeCommand, config: Config) -> Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let catalog = Catalog::open(&config.catalog_path())?;
    let mut out = std::io::stdout().lock();
    match cmd {
        TapeCommand::Create {
            barcode_prefix,
            count,
            size,
            retention_days,
            lock,
        } => {
            let retention = retention_days.zip(lock).map(|(d, l)| {
                (
                    d,
                    match l {
                        LockArg::Governance => LockMode::Governance,
                        LockArg::Compliance => LockMode::Compliance,
                    },
                )
            });
            let req = CreateTapes {
                prefix: &barcode_prefix,
                count,
                size_bytes: size.bytes(),
                retention,
            };
            let limits = TapeLimits {
                slots: config.library.slots,
                min_size: config.library.min_tape_size,
            };
            for t in tapes::create(&catalog, &req, limits, unix_now()).map_err(usage)? {
                writeln!(
                    out,
                    "created tape {} ({}) in {}",
                    t.barcode,
                    ByteSize(t.size_bytes),
                    location(&config, &t)
                )?;
            }
        }
        TapeCommand::List => {
            writeln!(
                out,
                "{:<16} {:<20} {:<20} {:>10} {:>12}  FLAGS",
                "BARCODE", "STATE", "LOCATION", "SIZE", "USED"
            )?;
            for t in catalog.tapes()? {
                writeln!(
                    out,
                    "{:<16} {:<20} {:<20} {:>10} {:>12}  {}",
                    t.barcode,
                    state(&t),
                    location(&config, &t),
                    ByteSize(t.size_bytes).to_string(),
                    t.data_bytes,
                    flags(&t)
                )?;
            }
        }
        TapeCommand::Show { barcode } => {
            let t = tapes::find(&catalog, &barcode).map_err(usage)?;
            writeln!(out, "barcode: {}", t.barcode)?;
            writeln!(out, "state: {}", state(&t))?;
            writeln!(out, "location: {}", location(&config, &t))?;
            writeln!(out, "size_bytes: {}", t.size_bytes)?;
            writeln!(out, "data_bytes: {}", t.data_bytes)?;
            writeln!(out, "objects: {}", t.objects)?;
            writeln!(out, "read_only: {}", t.read_only)?;
            if let Some(h) = t.tree_hash {
                writeln!(out, "tree_hash: {}", crate::store::keys::hex(&h))?;
            }
            if let Some(until) = t.retention_until_unix {
                let lock = t.lock_mode.map_or("none", LockMode::as_str);
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
            tapes::delete(&catalog, &barcode, bypass_governance, unix_now()).map_err(usage)?;
            writeln!(out, "deleted tape {barcode}")?;
        }
        TapeCommand::Retrieve { barcode } => {
            if Ready::read(&config).is_none() {
                bail!(crate::cli::UsageError(
                    "the daemon retrieves tapes: start `tidegate serve` first".into()
                ));
            }
            let t = tapes::find(&catalog, &barcode).map_err(usage)?;
            shelf::request_retrieval(&catalog, &t).map_err(usage)?;
            let done = follow(&catalog, &barcode)?;
            match done.state {
                TapeState::Retrieved => writeln!(
                    out,
                    "retrieved tape {barcode} into {} (read-only)",
                    location(&config, &done)
                )?,
                _ => bail!(
                    "{}",
                    done.error
                        .unwrap_or_else(|| format!("tape {barcode} is {}", done.state.label()))
                ),
            }
        }
        TapeCommand::Verify { barcode } => {
            let t = tapes::find(&catalog, &barcode).map_err(usage)?;
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
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for the shelf worker to finish the retrieval, showing progress on stderr.
fn follow(catalog: &Catalog, barcode: &str) -> Result<TapeRow> {
    let mut shown = 0;
    loop {
        let t = tapes::find(catalog, barcode).map_err(usage)?;
        if t.state != TapeState::Retrieving {
            return Ok(t);
        }
        if t.progress_bytes != shown {
            shown = t.progress_bytes;
            eprintln!("retrieving {barcode}: {shown} of {} bytes", t.data_bytes);
        }
        std::thread::sleep(POLL);
    }
}

fn state(t: &TapeRow) -> String {
    match t.state {
        TapeState::Archiving | TapeState::Retrieving if t.data_bytes > 0 => format!(
            "{} {}%",
            t.state.label(),
            t.progress_bytes.saturating_mul(100) / t.data_bytes
        ),
        s => s.label().to_owned(),
    }
}

fn location(config: &Config, t: &TapeRow) -> String {
    let layout = crate::daemon::library::layout(config);
    match t.location {
        None => "shelf".to_owned(),
        Some((kind, i)) => {
            let (name, e) = match kind {
                ElementKind::Slot => ("slot", Element::Slot(i)),
                ElementKind::Drive => ("drive", Element::Drive(i)),
                ElementKind::Mail => ("mail slot", Element::Mail(i)),
            };
            format!("{name} {} ({:#06x})", i + 1, layout.address(e))
        }
    }
}

fn flags(t: &TapeRow) -> String {
    let mut f = Vec::new();
    if t.read_only {
        f.push("read-only".to_owned());
    }
    if let (Some(until), Some(lock)) = (t.retention_until_unix, t.lock_mode) {
        f.push(format!("{} lock until {until}", lock.as_str()));
    }
    f.join(", ")
}
