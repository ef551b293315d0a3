//! `tidegate scrub`: verify every chunk; exit status 1 if any failed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::{ByteSize, Config};
use crate::daemon::{Engine, scrub};

pub fn run(config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    let report = rt.block_on(async {
        let engine = Engine::open(config).await?;
        let mut last_shown = std::time::Instant::now();
        scrub::scrub(&engine, |done, total| {
            // Progress on stderr at most once a second, and at the end.
            if done == total || last_shown.elapsed().as_secs() >= 1 {
                last_shown = std::time::Instant::now();
                tracing::info!("scrub: {done}/{total} chunks checked");
            }
        })
        .await
    })?;
    let mut out = std::io::stdout().lock();
    for line in report.corrupt.iter().chain(&report.unreadable) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "scrub: {} chunks ({}) checked, {} corrupt, {} unreadable",
        report.checked,
        ByteSize(report.bytes),
        report.corrupt.len(),
        report.unreadable.len()
    )?;
    Ok(
        if report.corrupt.is_empty() && report.unreadable.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
