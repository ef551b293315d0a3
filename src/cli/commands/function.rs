//! `job create import … --on-put PROGRAM`: the function an import job runs on each PUT
//! (docs/device.md, "Functions on PUT"). Checked before the job is created, installed after.

use anyhow::{Context, Result};

use crate::cli::UsageError;
use crate::cli::args::OnPutArgs;
use crate::config::Config;
use crate::gateway::import::{FunctionRequest, install_function};

/// The checked request, or `None` without `--on-put`. A program that cannot run, or a machine
/// without the sandbox, is a usage error (exit 2) before the job exists.
pub fn request(args: OnPutArgs) -> Result<Option<FunctionRequest>> {
    let Some(program) = args.on_put else {
        return Ok(None);
    };
    let req = FunctionRequest {
        program,
        pattern: args.pattern.unwrap_or_default(),
        timeout: args.timeout.unwrap_or(FunctionRequest::DEFAULT_TIMEOUT),
        memory_bytes: args
            .memory
            .map_or(FunctionRequest::DEFAULT_MEMORY_BYTES, |m| m.0),
    };
    req.check()
        .map_err(|e| UsageError(crate::error_chain::chain(&e)))?;
    Ok(Some(req))
}

pub fn install(config: &Config, job: &str, req: &FunctionRequest) -> Result<()> {
    install_function(&config.data_dir, job, req)
        .with_context(|| format!("job {job} was created, but its function was not installed"))?;
    Ok(())
}
