//! `tidegate treehash FILE...`: `<hex>  <file>` per file, like sha256sum.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::store::treehash;

pub fn run(files: &[PathBuf]) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for file in files {
        let hash = if file.as_os_str() == "-" {
            treehash::hash_reader(std::io::stdin().lock()).context("reading stdin")
        } else {
            std::fs::File::open(file)
                .and_then(treehash::hash_reader)
                .with_context(|| format!("reading {}", file.display()))
        };
        match hash {
            Ok(h) => writeln!(out, "{h}  {}", file.display())?,
            Err(e) => {
                // Like sha256sum: report and carry on with the other files.
                tracing::error!("{e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
