//! `tidegate bench codec`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::args::BenchCommand;
use crate::store::bench::{self, BenchOptions};

pub fn run(what: BenchCommand) -> Result<ExitCode> {
    match what {
        BenchCommand::Codec { quick } => {
            let opts = if quick {
                BenchOptions::quick()
            } else {
                BenchOptions::full()
            };
            if cfg!(debug_assertions) && !quick {
                tracing::warn!("this is a debug build: figures are meaningless, use --release");
            }
            bench::codec(opts, &mut std::io::stdout().lock())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
