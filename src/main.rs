//! Process edge: parse the command line, set up logging, run, map errors to exit codes
//! (0 ok, 1 runtime failure, 2 usage or configuration error), printing the error chain on one
//! line with each cause once (`error_chain::chain`).

use std::process::ExitCode;

use clap::Parser;
use tidegate::cli::{Cli, UsageError};
use tidegate::config::ConfigError;
use tidegate::daemon::DaemonError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match tidegate::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tidegate: {}", tidegate::error_chain::chain(err.as_ref()));
            if is_usage(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<UsageError>()
            || e.is::<ConfigError>()
            || matches!(
                e.downcast_ref::<DaemonError>(),
                Some(DaemonError::Config(_))
            )
    })
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
