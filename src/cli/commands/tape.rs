//! `tidegate tape create|list|show|delete|retrieve|verify`. While a daemon runs, create, list,
//! delete and retrieve go through its management API (issue 9); without one they are catalog
//! operations. `retrieve` asks the daemon's shelf worker and follows its progress; `verify`
//! reads the archive from the bucket itself.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::catalog::tapes::{LockMode, TapeState};
use crate::cli::args::{LockArg, TapeCommand};
use crate::cli::daemon_api::{DaemonApi, items, route, segment};
use crate::cli::{UsageError, gateway_error as usage};
use crate::config::{ByteSize, Config};
use crate::daemon::management::tape_json;
use crate::daemon::{Engine, Ready, unix_now};
use crate::gateway::tapes::{self, CreateTapes, TapeLimits, shelf};

/// How often `retrieve` looks at the daemon's progress.
const POLL: Duration = Duration::from_millis(200);

pub fn run(cmd: TapeCommand, config: Config) -> Result<ExitCode> {
    route(config, cmd, through_api, local)
}

/// Create, list, delete and retrieve through a running daemon's API, printing what `local`
/// prints; anything else is handed back (`show` and `verify` only read: the catalog and the
/// bucket answer them directly).
fn through_api(
    api: &DaemonApi,
    _config: &Config,
    cmd: TapeCommand,
    out: &mut impl Write,
) -> Result<Option<TapeCommand>> {
    match cmd {
        TapeCommand::Create {
            barcode_prefix,
            count,
            size,
            retention_days,
            lock,
        } => {
            let made = api.post(
                "/tapes",
                json!({
                    "barcode_prefix": barcode_prefix,
                    "count": count,
                    "size": size.bytes(),
                    "retention_days": retention_days,
                    "lock": lock.map(|l| lock_mode(l).as_str()),
                }),
            )?;
            for t in items(&made) {
                created_line(out, t)?;
            }
        }
        TapeCommand::List => {
            list_header(out)?;
            let all = api.get("/tapes")?;
            for t in items(&all) {
                list_line(out, t)?;
            }
        }
        TapeCommand::Delete {
            barcode,
            bypass_governance,
        } => {
            let query = if bypass_governance {
                "?bypass_governance=true"
            } else {
                ""
            };
            api.delete(&format!("/tapes/{}{query}", segment(&barcode)))?;
            writeln!(out, "deleted tape {barcode}")?;
        }
        TapeCommand::Retrieve { barcode } => {
            api.post(&format!("/tapes/{}/retrieve", segment(&barcode)), json!({}))?;
            let done = follow(&barcode, || {
                let all = api.get("/tapes")?;
                all.as_array()
                    .and_then(|ts| ts.iter().find(|t| t["barcode"] == barcode.as_str()))
                    .cloned()
                    .ok_or_else(|| UsageError(format!("tape {barcode} does not exist")).into())
            })?;
            retrieved(out, &barcode, &done)?;
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}

fn lock_mode(l: LockArg) -> LockMode {
    match l {
        LockArg::Governance => LockMode::Governance,
        LockArg::Compliance => LockMode::Compliance,
    }
}

fn local(cmd: TapeCommand, config: Config) -> Result<ExitCode> {
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
            let retention = retention_days.zip(lock).map(|(d, l)| (d, lock_mode(l)));
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
                created_line(&mut out, &tape_json(&config, &t))?;
            }
        }
        TapeCommand::List => {
            list_header(&mut out)?;
            for t in catalog.tapes()? {
                list_line(&mut out, &tape_json(&config, &t))?;
            }
        }
        TapeCommand::Show { barcode } => {
            let t = tapes::find(&catalog, &barcode).map_err(usage)?;
            let j = tape_json(&config, &t);
            writeln!(out, "barcode: {}", t.barcode)?;
            writeln!(out, "state: {}", field(&j, "state_label"))?;
            writeln!(out, "location: {}", field(&j, "location_label"))?;
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
            let done = follow(&barcode, || {
                let t = tapes::find(&catalog, &barcode).map_err(usage)?;
                Ok(tape_json(&config, &t))
            })?;
            retrieved(&mut out, &barcode, &done)?;
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

fn field<'a>(t: &'a Value, name: &str) -> &'a str {
    t[name].as_str().unwrap_or("?")
}

fn created_line(out: &mut impl Write, t: &Value) -> Result<()> {
    writeln!(
        out,
        "created tape {} ({}) in {}",
        field(t, "barcode"),
        ByteSize(t["size_bytes"].as_u64().unwrap_or(0)),
        field(t, "location_label")
    )?;
    Ok(())
}

fn list_header(out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "{:<16} {:<20} {:<20} {:>10} {:>12}  FLAGS",
        "BARCODE", "STATE", "LOCATION", "SIZE", "USED"
    )?;
    Ok(())
}

fn list_line(out: &mut impl Write, t: &Value) -> Result<()> {
    writeln!(
        out,
        "{:<16} {:<20} {:<20} {:>10} {:>12}  {}",
        field(t, "barcode"),
        field(t, "state_label"),
        field(t, "location_label"),
        ByteSize(t["size_bytes"].as_u64().unwrap_or(0)).to_string(),
        t["data_bytes"].as_u64().unwrap_or(0),
        flags(t)
    )?;
    Ok(())
}

/// The outcome of a retrieval `follow` saw finish.
fn retrieved(out: &mut impl Write, barcode: &str, done: &Value) -> Result<()> {
    if done["state"] == TapeState::Retrieved.as_str() {
        writeln!(
            out,
            "retrieved tape {barcode} into {} (read-only)",
            field(done, "location_label")
        )?;
        return Ok(());
    }
    match done["error"].as_str() {
        Some(e) => bail!("{e}"),
        None => bail!("tape {barcode} is {}", field(done, "state_label")),
    }
}

/// Waits for the shelf worker to finish the retrieval, showing progress on stderr; `look`
/// reads the tape as the API shows it.
fn follow(barcode: &str, mut look: impl FnMut() -> Result<Value>) -> Result<Value> {
    let mut shown = 0;
    loop {
        let t = look()?;
        if t["state"] != TapeState::Retrieving.as_str() {
            return Ok(t);
        }
        let progress = t["progress_bytes"].as_u64().unwrap_or(0);
        if progress != shown {
            shown = progress;
            let total = t["data_bytes"].as_u64().unwrap_or(0);
            eprintln!("retrieving {barcode}: {shown} of {total} bytes");
        }
        std::thread::sleep(POLL);
    }
}

fn flags(t: &Value) -> String {
    let mut f = Vec::new();
    if t["read_only"].as_bool() == Some(true) {
        f.push("read-only".to_owned());
    }
    if let (Some(until), Some(lock)) = (t["retention_until_unix"].as_i64(), t["lock_mode"].as_str())
    {
        f.push(format!("{lock} lock until {until}"));
    }
    f.join(", ")
}
