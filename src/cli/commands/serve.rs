//! `tidegate serve`: runs the daemon in the foreground (systemd or a terminal).

use std::process::ExitCode;

use anyhow::Result;

use crate::config::Config;

pub fn run(config: Config) -> Result<ExitCode> {
    let rt = crate::cli::runtime()?;
    if config.is_embedded() {
        tracing::info!(data_dir = %config.data_dir.display(), "no config file: running the embedded default");
    }
    rt.block_on(crate::daemon::serve(config))?;
    Ok(ExitCode::SUCCESS)
}
